"""Reranker folders of random weights: the Qwen3-Reranker shapes with Qwen3's real tokenizer.

Qwen3-Reranker-0.6B and -4B are Qwen3 causal LMs of the same shapes as Qwen3 0.6B / 4B (tied LM
head) with Qwen3's tokenizer as it is: no token appended to an input, left padding,
``<|endoftext|>`` as PAD.  A folder written here loads through ``RerankerModel.load`` and
``AutoModelForCausalLM`` like the real checkpoint; its scores mean nothing, but shapes,
vocabulary, prompt tokens and cost per pair are the real ones.

``python -m workers.bench.reranker_folder SHAPE DIR`` writes one (needs ``make tokenizer`` first).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, Qwen3ForCausalLM

from workers.bench.qwen3_folder import write_folder_cli
from workers.bench.qwen3_tokenizer import EOS_ID, VOCAB, qwen3_tokenizer, save_tokenizer
from workers.bench.setup import SHAPES, Shape, qwen3_config, seeded_model

RERANKER_SHAPES: dict[str, Shape] = {
    "qwen3-reranker-0.6b": SHAPES["qwen3-0.6b"],
    "qwen3-reranker-4b": SHAPES["qwen3-4b"],
    "tiny-reranker": Shape(
        hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=VOCAB, head_dim=16, eos=EOS_ID
    ),
}
"""The shapes a reranker folder comes in; every one has the real vocabulary."""

CONTEXT = 40960
"""Qwen3-Reranker's ``max_position_embeddings``."""


def random_qwen3_lm(shape: Shape, device: str, dtype: torch.dtype, seed: int = 0) -> PreTrainedModel:
    """A Qwen3 causal LM of ``shape`` with seeded random weights, built directly on ``device``."""
    config = qwen3_config(
        shape,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        eos_token_id=EOS_ID + 2,  # <|im_end|>, as the chat checkpoints say
        pad_token_id=EOS_ID,
    )
    model = seeded_model(Qwen3ForCausalLM, config, device, dtype, seed)
    model.config.architectures = ["Qwen3ForCausalLM"]
    return model


def save_reranker_tokenizer(dest: Path, *, folder: Path | None = None) -> Path:
    """Write Qwen3-Reranker's tokenizer into ``dest``: Qwen3's vocabulary as it is, left padding."""
    return save_tokenizer(
        dest, qwen3_tokenizer(folder), eos_token="<|im_end|>", max_length=CONTEXT, folder=folder
    )


def save_random_reranker(
    shape_name: str, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Path:
    """Write ``folder``: seeded random weights of ``RERANKER_SHAPES[shape_name]`` + Qwen3-Reranker's
    tokenizer.  Same arguments, same weights.  Needs the pinned tokenizer files (``make tokenizer``)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_reranker_tokenizer(folder)
    random_qwen3_lm(RERANKER_SHAPES[shape_name], device, dtype, seed).save_pretrained(folder)
    return folder


def main(argv: Sequence[str]) -> int:
    """CLI: write one folder (CUDA and bf16 when available, for the large shapes)."""
    tokenizer = "Qwen3-Reranker's tokenizer"
    return write_folder_cli(
        argv, "workers.bench.reranker_folder", __doc__, RERANKER_SHAPES, save_random_reranker, tokenizer
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
