"""``python -m pipeline bench --rerank``: reranker pairs per second, ours against a plain padded
transformers forward of the same pairs, in the same process, with a check that both score alike.

The model is a folder of random weights of a Qwen3-Reranker shape with Qwen3's real tokenizer
(:mod:`workers.bench.reranker_folder`; ``--model`` runs any reranker folder instead).  Documents are
passages of the bundled sample corpus, lognormal in length; each query reranks ``--docs-per-query``
of them.  Two ways score every pair:

* **ours** — the reranker actor's path without the Ray hop: :class:`RerankerModel` behind a real
  :class:`~workers.batcher.MicroBatcher` (token-budget batches, packed where the device allows, only the
  "yes"/"no" rows of the LM head at the last position), every query submitted at once.
* **plain** — Qwen3-Reranker's model-card code: pairs in arrival order, ``--plain-batch`` at a time,
  left-padded, the full LM head over every position, ``log_softmax`` of ("no", "yes") at the last one.

Scores are compared pair by pair (max absolute difference within ``--tolerance``, else exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from workers.batcher import MicroBatcher
from workers.bench.realtext_bench import environment
from workers.bench.reranker_folder import RERANKER_SHAPES, save_random_reranker
from workers.bench.setup import lognormal_lengths
from workers.model.loading import pick_device
from workers.model.reranker_model import RerankerModel
from workers.reranker_settings import RerankerSettings
from workers.settings import BatchSettings

_CORPUS = Path(__file__).resolve().parents[2] / "pipeline" / "tools" / "sample_corpus"
_QUERIES = Path(__file__).resolve().parents[2] / "pipeline" / "tools" / "sample_queries.txt"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline bench --rerank", description=__doc__)
    parser.add_argument("--rerank", action="store_true", required=True, help="this benchmark")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--random", choices=sorted(RERANKER_SHAPES), default="tiny-reranker")
    source.add_argument("--model", help="a reranker folder instead of random weights")
    parser.add_argument("--queries", type=int, default=32, help="queries, each reranking its documents")
    parser.add_argument("--docs-per-query", type=int, default=64)
    parser.add_argument("--median-words", type=float, default=120, help="median document length in words")
    parser.add_argument("--max-words", type=int, default=1500)
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="our batches' token budget")
    parser.add_argument("--plain-batch", type=int, default=16, help="pairs per plain forward")
    parser.add_argument("--packing", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--device", help="default: cuda when there is a GPU")
    parser.add_argument(
        "--tolerance", type=float, help="max |score difference| (default 0.02 bf16, 1e-4 fp32)"
    )
    parser.add_argument(
        "--fp32-reference",
        type=int,
        default=0,
        metavar="PAIRS",
        help="also score this many pairs (sampled) with a float32 copy of the model, padded, and report "
        "how far ours and plain each are from it: tells bf16 rounding from a defect",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, help="JSON result (default tests/perf/results/rerank-SHAPE-DEVICE.json)"
    )
    return parser


def workload(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """``--queries`` (query, documents) requests: sample queries, passages of the sample corpus."""
    words = " ".join(path.read_text(encoding="utf-8") for path in sorted(_CORPUS.glob("*.md"))).split()
    queries = [line.strip() for line in _QUERIES.read_text(encoding="utf-8").splitlines() if line.strip()]
    total = args.queries * args.docs_per_query
    lengths = lognormal_lengths(total, args.seed, median=args.median_words, low=4, high=args.max_words)
    starts = np.random.default_rng(args.seed).integers(0, len(words), size=total)
    documents = [" ".join((words * 2)[s : s + n]) for s, n in zip(starts, lengths, strict=True)]
    return [
        (queries[q % len(queries)], documents[q * args.docs_per_query : (q + 1) * args.docs_per_query])
        for q in range(args.queries)
    ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def score_ours(model: RerankerModel, requests: list[list[list[int]]], budget: int) -> list[np.ndarray]:
    """Every request submitted at once to a real MicroBatcher over the model."""
    settings = BatchSettings(
        max_batch_tokens=budget, max_wait_ms=2.0, priority_share=1.0, max_priority_tokens=1 << 30
    )

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(model.run_batch, settings, packed=model.packed)
        try:
            out = await asyncio.gather(*(batcher.submit(r, (1,), priority=True) for r in requests))
        finally:
            await batcher.close()
        return [scores[1][:, 0] for scores in out]

    return asyncio.run(run())


def score_plain(
    module: Any, pairs: list[list[int]], yes_no: tuple[int, int], pad: int, batch: int
) -> np.ndarray:
    """The model card's padded forward: full logits, log_softmax over ("no", "yes") at the last position."""
    device = next(module.parameters()).device
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch):
            rows = pairs[start : start + batch]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
            logits = module(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1, :]
            pair = torch.stack([logits[:, yes_no[1]], logits[:, yes_no[0]]], dim=1)
            scores += torch.log_softmax(pair, dim=1)[:, 1].exp().tolist()
    return np.asarray(scores, dtype=np.float32)


def float32_distances(
    module: Any,
    pairs: list[list[int]],
    scored: dict[str, np.ndarray],
    yes_no: tuple[int, int],
    pad: int,
    *,
    count: int,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    """Score ``count`` sampled pairs with a float32 copy of ``module`` (the plain padded forward) and give,
    for each of ``scored`` (name -> bf16 scores of every pair), its max and mean |difference| from it."""
    import copy

    picked = np.sort(np.random.default_rng(seed).choice(len(pairs), min(count, len(pairs)), replace=False))
    full = copy.deepcopy(module).float()
    try:
        reference = score_plain(full, [pairs[i] for i in picked], yes_no, pad, batch)
    finally:
        del full
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    distances = {
        name: {
            "max_abs_difference": float(np.max(np.abs(scores[picked] - reference))),
            "mean_abs_difference": float(np.mean(np.abs(scores[picked] - reference))),
        }
        for name, scores in scored.items()
    }
    return {"pairs": len(picked), "seed": seed, **distances}


def _timed(device: str, work: Any) -> tuple[Any, float]:
    _sync(device)
    started = time.perf_counter()
    out = work()
    _sync(device)
    return out, time.perf_counter() - started


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Measure both ways on ``folder``; the JSON result."""
    device = pick_device(args.device)
    model = RerankerModel.load(
        RerankerSettings(name_or_path=str(folder), packing=args.packing), device=device
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    yes, no = (int(cast(int, tokenizer.convert_tokens_to_ids(token))) for token in ("yes", "no"))
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    requests = [[list(p) for p in model.encode_pairs(q, docs)] for q, docs in workload(args)]
    pairs = [pair for request in requests for pair in request]
    tokens = sum(map(len, pairs))
    # Warm-up of both paths (CUDA context, kernels, allocator) on a few requests, outside the timing.
    score_ours(model, requests[:2], args.max_batch_tokens)
    score_plain(model.module, pairs[: args.plain_batch], (yes, no), pad, args.plain_batch)
    ours_out, ours_s = _timed(device, lambda: score_ours(model, requests, args.max_batch_tokens))
    plain, plain_s = _timed(
        device, lambda: score_plain(model.module, pairs, (yes, no), pad, args.plain_batch)
    )
    ours = np.concatenate(ours_out)
    difference = float(np.max(np.abs(ours - plain)))
    info = model.info()
    tolerance = args.tolerance or (0.02 if info.dtype == "bfloat16" else 1e-4)
    lengths = np.array([len(p) for p in pairs])
    reference = (
        float32_distances(
            model.module,
            pairs,
            {"ours": ours, "plain": plain},
            (yes, no),
            pad,
            count=args.fp32_reference,
            batch=args.plain_batch,
            seed=args.seed,
        )
        if args.fp32_reference
        else None
    )
    return {
        "command": shlex.join(["python", "-m", "pipeline", "bench", *args.argv]),
        **environment(device),
        "model": {**info.__dict__, "name": args.model or f"random {args.random}"},
        "pairs": len(pairs),
        "queries": len(requests),
        "tokens": tokens,
        "pair_tokens": {
            "median": int(np.median(lengths)),
            "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
        },
        "max_batch_tokens": args.max_batch_tokens,
        "plain_batch": args.plain_batch,
        "ours": {
            "seconds": round(ours_s, 3),
            "pairs_per_s": len(pairs) / ours_s,
            "tokens_per_s": tokens / ours_s,
        },
        "plain": {
            "seconds": round(plain_s, 3),
            "pairs_per_s": len(pairs) / plain_s,
            "tokens_per_s": tokens / plain_s,
        },
        "speedup": plain_s / ours_s,
        "max_abs_score_difference": difference,
        "mean_abs_score_difference": float(np.mean(np.abs(ours - plain))),
        "score_spread": float(np.ptp(plain)),
        "tolerance": tolerance,
        "scores_agree": difference <= tolerance,
        "float32_reference": reference,
    }


def _float32_line(ref: dict[str, Any]) -> str:
    ours, plain = ref["ours"], ref["plain"]
    return (
        f"  vs float32 on {ref['pairs']} pairs: ours max {ours['max_abs_difference']:.2e} mean "
        f"{ours['mean_abs_difference']:.2e}; plain max {plain['max_abs_difference']:.2e} mean "
        f"{plain['mean_abs_difference']:.2e}"
    )


def _summary(result: dict[str, Any]) -> str:
    model, ours, plain = result["model"], result["ours"], result["plain"]
    return "\n".join([
        f"{model['name']} on {result['device']} ({model['dtype']}, packed={model['packed']}): "
        f"{result['pairs']} pairs, {result['tokens']} tokens",
        f"  ours  {ours['pairs_per_s']:9.1f} pairs/s {ours['tokens_per_s']:10.0f} tok/s",
        f"  plain {plain['pairs_per_s']:9.1f} pairs/s {plain['tokens_per_s']:10.0f} tok/s",
        f"  x{result['speedup']:.2f}; max |score difference| {result['max_abs_score_difference']:.2e} "
        f"(tolerance {result['tolerance']:g}, spread {result['score_spread']:.3f})",
        *([_float32_line(ref)] if (ref := result["float32_reference"]) else []),
    ])  # fmt: skip


def main(argv: Sequence[str]) -> int:
    """CLI entry: run, write the JSON, print a summary; exit 1 when the scores disagree."""
    args = _parser().parse_args(argv)
    args.argv = list(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            folder = Path(args.model)
        else:
            device = pick_device(args.device)
            dtype = (
                torch.bfloat16
                if device.startswith("cuda") and not args.random.startswith("tiny")
                else torch.float32
            )
            folder = save_random_reranker(
                args.random, Path(scratch) / args.random, device=device, dtype=dtype, seed=args.seed
            )
        result = run(args, folder)
    name = Path(args.model).name if args.model else args.random
    out: Path = (
        args.out
        or Path("tests/perf/results") / f"rerank-{name}-{result['device'].lower().replace(' ', '-')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_summary(result))
    print(f"written to {out}")
    return 0 if result["scores_agree"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
