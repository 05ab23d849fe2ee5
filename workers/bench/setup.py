"""What :mod:`workers.bench.embedder_bench` measures on: random-weight Qwen3-Embedding shapes,
token-id workloads, the peer.

Documents are random token ids with the model's special tokens around them, so no real tokenizer or
corpus is needed.  The sentence-transformers peer reads the same ids as text through a word-level
"id tokenizer" (token ``i`` is the word ``t{i}``) and runs on the very model object being measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from workers.model.embedding_model import EmbeddingModel
from workers.model.loading import compute_dtype
from workers.model.pooling import PoolingMode
from workers.model.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Shape:
    """Architecture of a Qwen3 model (the Qwen3-Embedding checkpoints' config.json values)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 151669
    head_dim: int = 128
    tie_word_embeddings: bool = True
    eos: int = 151643
    """``<|endoftext|>``: what Qwen3-Embedding's tokenizer appends to every input, and its PAD."""


SHAPES: dict[str, Shape] = {
    "qwen3-0.6b": Shape(hidden=1024, layers=28, heads=16, kv_heads=8, intermediate=3072),
    "qwen3-4b": Shape(hidden=2560, layers=36, heads=32, kv_heads=8, intermediate=9728),
    "qwen3-8b": Shape(
        hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=12288, tie_word_embeddings=False
    ),
    "tiny": Shape(
        hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, head_dim=16, eos=511
    ),
}


def qwen3_config(shape: Shape, **overrides: Any) -> Qwen3Config:
    """The config of a Qwen3 model of ``shape`` as Qwen3-Embedding has it (32K positions, EOS as PAD);
    ``overrides`` (config keys) win."""
    values: dict[str, Any] = {
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "eos_token_id": shape.eos,
        "pad_token_id": shape.eos,
    }
    return Qwen3Config(**(values | overrides))


def seeded_model(
    model_class: type[PreTrainedModel], config: Qwen3Config, device: str, dtype: torch.dtype, seed: int
) -> PreTrainedModel:
    """``model_class(config)`` with weights drawn after ``torch.manual_seed(seed)`` (same arguments,
    same weights), built directly on ``device`` in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default)
    model.config.dtype = dtype
    return model.eval()


def random_qwen3(shape: Shape, device: str, dtype: torch.dtype, seed: int = 0) -> PreTrainedModel:
    """A Qwen3 encoder (no LM head) of ``shape`` with seeded random weights, built directly on ``device``."""
    return seeded_model(Qwen3Model, qwen3_config(shape), device, dtype, seed)


def random_embedding_model(
    name: str,
    shape: Shape,
    module: PreTrainedModel,
    *,
    device: str,
    dtype: Literal["bfloat16", "float32"],
    max_length: int,
    packing: Literal["auto", "on", "off"],
    compile: bool = False,
    tokenizer: Tokenizer | None = None,
) -> EmbeddingModel:
    """``module`` (random weights of ``shape``, e.g. :func:`random_qwen3`) as an EmbeddingModel that
    reads text with ``tokenizer`` (default: id-level text, :func:`id_tokenizer`), which appends EOS,
    and pools that EOS, as Qwen3-Embedding does."""
    backend = tokenizer or id_tokenizer(shape.vocab, Affixes.eos_appended(shape.eos))
    return EmbeddingModel(
        name=f"random-{name}",
        model=module,
        tokenizer=TextTokenizer(backend, max_length=max_length, pad_token_id=shape.eos),
        pooling="last_token",
        device=device,
        dtype=dtype,
        packing=packing,
        compile=compile,
    )


def random_model(
    name: str,
    shape: Shape,
    device: str,
    seed: int = 0,
    *,
    max_length: int,
    packing: Literal["auto", "on", "off"],
    compile: bool = False,
    tokenizer: Tokenizer | None = None,
) -> EmbeddingModel:
    """:func:`random_embedding_model` around :func:`random_qwen3` weights of ``shape`` (seeded by
    ``seed``) in the 'auto' dtype of ``device``: bfloat16 on a GPU, float32 elsewhere."""
    dtype = compute_dtype("auto", device)
    module = random_qwen3(shape, device, getattr(torch, dtype), seed)
    return random_embedding_model(
        name, shape, module, device=device, dtype=dtype, max_length=max_length, packing=packing,
        compile=compile, tokenizer=tokenizer,
    )  # fmt: skip


def lognormal_lengths(
    count: int, seed: int, *, median: float = 300, sigma: float = 0.8, low: int = 8, high: int = 2048
) -> np.ndarray:
    """``count`` token counts, lognormal around ``median``, clipped to ``low..high``, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    lengths = np.rint(rng.lognormal(np.log(median), sigma, size=count))
    return np.clip(lengths, low, high).astype(np.int64)


@dataclass(frozen=True)
class Affixes:
    """Special tokens the model's tokenizer puts around every input (Qwen3: an EOS after it)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad: int

    @classmethod
    def eos_appended(cls, eos: int) -> Affixes:
        """Qwen3-Embedding's: nothing before a text, EOS after it, EOS as PAD."""
        return cls(prefix=(), suffix=(eos,), pad=eos)

    def wrap(self, body: Sequence[int]) -> list[int]:
        return [*self.prefix, *body, *self.suffix]


def make_documents(lengths: np.ndarray, vocab: int, affixes: Affixes, seed: int) -> list[list[int]]:
    """One document of each length (special tokens included); body ids are random non-special ids."""
    rng = np.random.default_rng(seed + 1)
    special = np.array(sorted({*affixes.prefix, *affixes.suffix, affixes.pad}))
    ordinary = int(np.setdiff1d(np.arange(len(special) + 1), special)[0])
    extra = len(affixes.prefix) + len(affixes.suffix)
    documents = []
    for length in lengths:
        body = rng.integers(0, vocab, size=max(1, int(length) - extra))
        body[np.isin(body, special)] = ordinary
        documents.append(affixes.wrap(body.tolist()))
    return documents


def as_text(document: Sequence[int], affixes: Affixes) -> str:
    """The id-tokenizer text of a document: its body ids as words (the tokenizer adds the affixes)."""
    body = document[len(affixes.prefix) : len(document) - len(affixes.suffix)]
    return " ".join(f"t{token}" for token in body)


def id_tokenizer(vocab: int, affixes: Affixes) -> Tokenizer:
    """A tokenizer that maps the word ``t{i}`` to id ``i`` and adds ``affixes`` like the model's own."""
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = [f"t{token}" for token in (*affixes.prefix, *affixes.suffix)]
    template = " ".join([*words[: len(affixes.prefix)], "$A", *words[len(affixes.prefix) :]])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(word, int(word[1:])) for word in dict.fromkeys(words)]
    )
    return tokenizer


def save_random_model(shape: Shape, folder: Path, device: str, dtype: torch.dtype, seed: int = 0) -> Path:
    """Write a loadable model folder: seeded random weights of ``shape`` and its id tokenizer.

    The folder loads like a Qwen3-Embedding checkpoint (``EmbeddingModel.load``, last-token pooling,
    EOS appended), so the whole pipeline can run on the real shapes without the real weights.  Its
    texts are words ``t{id}``: one word is one token.
    """
    affixes = Affixes.eos_appended(shape.eos)
    model = random_qwen3(shape, device, dtype, seed)
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=id_tokenizer(shape.vocab, affixes),
        eos_token=f"t{shape.eos}",
        pad_token=f"t{affixes.pad}",
        padding_side="left",
        model_max_length=int(model.config.max_position_embeddings),
    ).save_pretrained(folder)
    return folder


_ST_POOLING = {"last_token": "lasttoken", "mean": "mean", "cls": "cls"}
# Enough of a model for sentence-transformers to load; its weights are swapped for the real ones.
_STUB = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}


def sentence_transformer_peer(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    affixes: Affixes,
    pooling: PoolingMode,
    folder: Path,
    pad_token: str | None = None,
) -> Any:
    """sentence-transformers' own pipeline (id tokenizer, Transformer, Pooling, Normalize) around ``model``.

    sentence-transformers loads a stub of the same architecture from ``folder``; its Transformer
    module then gets ``model`` itself, so both sides run the same weights and the same object.
    ``pad_token``: the tokenizer's PAD as text (default: the id tokenizer's word for ``affixes.pad``).
    """
    from sentence_transformers import SentenceTransformer

    values = {**model.config.to_dict(), **_STUB}
    values.update(
        {
            key: 2 if key == "num_key_value_heads" else 16
            for key in ("num_key_value_heads", "head_dim")
            if key in values
        }
    )
    if values.get("layer_types"):
        values["layer_types"] = values["layer_types"][:1]
    AutoModel.from_config(type(model.config).from_dict(values)).save_pretrained(folder)
    max_length = int(model.config.max_position_embeddings)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad_token or f"t{affixes.pad}",
        padding_side="left" if pooling == "last_token" else "right",
        model_max_length=max_length,
    ).save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": model.config.hidden_size, "pooling_mode": _ST_POOLING[pooling]})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    peer = SentenceTransformer(str(folder), device=str(model.device))
    transformer = peer[0]
    attribute = "model" if "model" in transformer._modules else "auto_model"
    setattr(transformer, attribute, model)
    return peer
