"""Reranker folders of random weights: the Qwen3-Reranker shapes with Qwen3's real tokenizer.

Qwen3-Reranker-0.6B and -4B are Qwen3 causal LMs of the same shapes as Qwen3 0.6B / 4B (tied LM
head) with Qwen3's tokenizer as it is: no token appended to an input, left padding,
``<|endoftext|>`` as PAD.  A folder written here loads through ``RerankerModel.load`` and
``AutoModelForCausalLM`` like the real checkpoint; its scores mean nothing, but shapes,
vocabulary, prompt tokens and cost per pair are the real ones.

``python -m workers.bench.reranker_folder SHAPE DIR`` writes one (needs ``make tokenizer`` first).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

from workers.bench.qwen3_tokenizer import EOS, EOS_ID, VOCAB, cached_dir
from workers.bench.setup import SHAPES, Shape

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
    config = Qwen3Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=CONTEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=EOS_ID + 2,  # <|im_end|>, as the chat checkpoints say
        pad_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.config.dtype = dtype
    model.config.architectures = ["Qwen3ForCausalLM"]
    return model.eval()


def save_reranker_tokenizer(dest: Path, *, folder: Path | None = None) -> Path:
    """Write Qwen3-Reranker's tokenizer into ``dest``: Qwen3's vocabulary as it is, left padding."""
    source = cached_dir(folder)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(dest / "tokenizer.json"))
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.update(
        {
            "eos_token": "<|im_end|>",
            "pad_token": EOS,
            "padding_side": "left",
            "model_max_length": CONTEXT,
            "tokenizer_class": "Qwen2Tokenizer",
        }
    )
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return dest


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
    parser = argparse.ArgumentParser(
        prog="python -m workers.bench.reranker_folder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("shape", choices=sorted(RERANKER_SHAPES))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and not args.shape.startswith("tiny") else torch.float32
    save_random_reranker(
        args.shape, args.folder, device="cuda" if cuda else "cpu", dtype=dtype, seed=args.seed
    )
    print(f"random {args.shape} weights + Qwen3-Reranker's tokenizer written to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
