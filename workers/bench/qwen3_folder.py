"""Model folders of random weights of the real Qwen3-Embedding shapes + the real Qwen3 tokenizer.

A folder written here is laid out like a Qwen3-Embedding checkpoint (``config.json``, safetensors,
Qwen3-Embedding's tokenizer, and the sentence-transformers modules at the root: lasttoken pooling,
Normalize), so ``EmbeddingModel.load``, the chunker, ``search`` and ``SentenceTransformer(folder)``
all load it through their ordinary paths.  The weights are random (seeded): vectors mean nothing,
but shapes, vocabulary, special tokens, padding and cost per token are the real ones.

``tiny-real`` is two tiny random Qwen3 layers over the real 151,669-token vocabulary and tokenizer:
the real-tokenizer path on a CPU in a few seconds.

``python -m workers.bench.qwen3_folder SHAPE DIR`` writes one (needs ``make tokenizer`` first).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from workers.bench.qwen3_tokenizer import EOS_ID, VOCAB, save_embedding_tokenizer
from workers.bench.setup import SHAPES, Shape, random_qwen3

REAL_SHAPES: dict[str, Shape] = {
    "qwen3-0.6b": SHAPES["qwen3-0.6b"],
    "qwen3-4b": SHAPES["qwen3-4b"],
    "qwen3-8b": SHAPES["qwen3-8b"],
    "tiny-real": Shape(
        hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=VOCAB, head_dim=16, eos=EOS_ID
    ),
}
"""The shapes a real-tokenizer folder comes in; every one has the real vocabulary and EOS."""

CONTEXT = 32768
"""Qwen3-Embedding's context: ``model_max_length`` of its tokenizer, ``max_position_embeddings``."""


def folder_context(path: str) -> int:
    """The longest input the benches give the model folder ``path``: :data:`CONTEXT`, or fewer where
    the folder's config has fewer positions (all-MiniLM-L6-v2: 512)."""
    from workers.model.tokenizer import resolve_model_files

    config = Path(resolve_model_files(path).path) / "config.json"
    positions = (
        json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
        if config.is_file()
        else None
    )
    return min(CONTEXT, positions) if isinstance(positions, int) else CONTEXT


def write_sentence_transformers_modules(folder: Path, hidden: int, max_length: int = CONTEXT) -> None:
    """Qwen3-Embedding's sentence-transformers files at the root of ``folder``: lasttoken, Normalize."""
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": hidden, "pooling_mode": "lasttoken", "include_prompt": True})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))


def save_real_tokenizer_model(
    shape_name: str, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Path:
    """Write ``folder``: seeded random weights of ``REAL_SHAPES[shape_name]`` + Qwen3-Embedding's tokenizer.

    Same arguments, same weights.  Needs the pinned tokenizer files (``make tokenizer``).
    """
    shape = REAL_SHAPES[shape_name]
    folder.mkdir(parents=True, exist_ok=True)
    save_embedding_tokenizer(folder, max_length=CONTEXT)
    model = random_qwen3(shape, device, dtype, seed)
    model.save_pretrained(folder)
    write_sentence_transformers_modules(folder, shape.hidden)
    return folder


def write_folder_cli(
    argv: Sequence[str],
    module: str,
    doc: str,
    shapes: Mapping[str, Shape],
    save: Callable[..., Path],
    tokenizer: str,
) -> int:
    """The CLI ``python -m {module}`` of a folder writer (``doc``: its module docstring):
    ``SHAPE DIR [--seed N]`` calls ``save(shape, folder, device=, dtype=, seed=)``, on CUDA in bf16
    when available, except for the tiny shapes (float32); ``tokenizer`` names the tokenizer written."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    parser.add_argument("shape", choices=sorted(shapes))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and not args.shape.startswith("tiny") else torch.float32
    save(args.shape, args.folder, device="cuda" if cuda else "cpu", dtype=dtype, seed=args.seed)
    print(f"random {args.shape} weights + {tokenizer} written to {args.folder}")
    return 0


def main(argv: Sequence[str]) -> int:
    """CLI: write one folder (CUDA and bf16 when available, for the large shapes)."""
    tokenizer = "the real Qwen3-Embedding tokenizer"
    return write_folder_cli(
        argv, "workers.bench.qwen3_folder", __doc__, REAL_SHAPES, save_real_tokenizer_model, tokenizer
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
