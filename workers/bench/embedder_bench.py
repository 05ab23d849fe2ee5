"""`python -m pipeline bench`: embedder throughput side by side with sentence-transformers, same weights.

Strategies, each timed over the whole workload after a warm-up on its first documents:

* ``ours``: :class:`~workers.model.embedding_model.EmbeddingModel` behind the actor's
  :class:`~workers.batcher.MicroBatcher` (token budget, sorted windows, packed forward passes where
  the model has them), all documents submitted at once in small concurrent requests, as an actor
  receives them;
* ``sentence_transformers``: its own ``encode(batch_size=32, normalize_embeddings=True)`` on the same model;
* ``hf_arrival``: plain padded transformers forward passes, 32 documents a batch in arrival order.

Accuracy: a document's vector from every strategy must have cosine >= 0.999 with a plain bf16 (or
float32 on CPU) forward of that document alone.  Throughput counts real (unpadded) tokens.  The
fraction of peak is ``tokens/s x 2 x non-embedding parameters`` over a measured dense matmul rate.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.bench.setup import (
    SHAPES,
    Affixes,
    id_tokenizer,
    lognormal_lengths,
    make_documents,
    random_model,
    save_random_model,
    sentence_transformer_peer,
)
from workers.bench.strategies import (
    PEER,
    Strategy,
    build_strategies,
    padded_forward,
    peer_tokenize,
    single_forward,
)
from workers.model.embedding_model import EmbeddingModel
from workers.model.loading import compute_dtype, pick_device
from workers.settings import BatchSettings, ModelSettings

MIN_COSINE = 0.999


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline bench", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="local folder or hub id of the model")
    which.add_argument("--random", choices=sorted(SHAPES), help="random weights of a Qwen3-Embedding shape")
    parser.add_argument("--docs", type=int, default=1024, help="documents per workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=2048, help="longest mixed document, in tokens")
    parser.add_argument("--workloads", default="mixed,fixed512", help="comma list of mixed, fixed512")
    parser.add_argument("--strategies", default=f"ours,{PEER},hf_arrival", help="comma list")
    parser.add_argument("--max-batch-tokens", type=int, default=BatchSettings().max_batch_tokens)
    parser.add_argument("--packing", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA only)")
    parser.add_argument(
        "--accuracy-sample", type=int, default=64, help="documents checked on a GPU (CPU: all)"
    )
    parser.add_argument(
        "--fp32-reference",
        action="store_true",
        help="also compare the checked documents with a float32 forward of each alone (diagnostic: "
        "how far the bf16 reference itself is from float32)",
    )
    parser.add_argument(
        "--full-precision-reductions",
        action="store_true",
        help="forbid cuBLAS reduced-precision (bf16/fp16) split-K reductions in every strategy",
    )
    parser.add_argument("--warmup-docs", type=int, default=64)
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument(
        "--save-model",
        type=Path,
        metavar="DIR",
        help="with --random: write the random model and its tokenizer to DIR (no benchmark)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON result (default tests/perf/results/<model>-<device>.json)"
    )
    return parser


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul rate: the mean of 10 products after 3 warm-ups, on random data."""
    size = 8192 if device.startswith("cuda") else 1024
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * size**3 / (time.perf_counter() - started) / 1e12


def _workload(name: str, args: argparse.Namespace, vocab: int, affixes: Affixes) -> list[list[int]]:
    if name == "mixed":
        lengths = lognormal_lengths(args.docs, args.seed, high=args.max_length)
    elif name == "fixed512":
        lengths = np.full(args.docs, 512)
    else:
        raise ValueError(f"unknown workload {name!r}")
    return make_documents(lengths, vocab, affixes, args.seed)


def _measure(
    strategies: dict[str, Strategy],
    names: list[str],
    documents: list[list[int]],
    args: argparse.Namespace,
    model: EmbeddingModel,
    reference: dict[int, np.ndarray],
    fp32_reference: dict[int, np.ndarray] | None,
    peak_tflops: float,
    flops_per_token: float,
    peer_tokenize: Callable[[list[list[int]]], float],
) -> dict[str, Any]:
    tokens = sum(len(document) for document in documents)
    results: dict[str, Any] = {}
    for name in names:
        strategies[name](documents[: args.warmup_docs])
        _sync(model.device)
        started = time.perf_counter()
        vectors = strategies[name](documents)
        _sync(model.device)
        seconds = time.perf_counter() - started
        cosines = [float(vectors[i] @ expected) for i, expected in reference.items()]
        results[name] = {
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "docs_per_s": len(documents) / seconds,
            "peak_fraction": tokens / seconds * flops_per_token / (peak_tflops * 1e12),
            "accuracy": {
                "checked": len(cosines),
                "min_cosine": min(cosines),
                "passed": min(cosines) >= MIN_COSINE,
            },
        }
        if fp32_reference is not None:
            results[name]["accuracy"]["min_cosine_vs_fp32"] = min(
                float(vectors[i] @ expected) for i, expected in fp32_reference.items()
            )
    if PEER in results:
        # Host work inside the peer's time: its tokenizer reading the ids back from text (none in ours).
        results[PEER]["tokenize_seconds"] = peer_tokenize(documents)
        for figures in results.values():
            figures[f"ratio_vs_{PEER}"] = figures["tokens_per_s"] / results[PEER]["tokens_per_s"]
    lengths = np.array([len(document) for document in documents])
    diagnostics = {}
    if fp32_reference is not None:
        # The bar's own yardstick: how close the bf16 single-document forward is to float32.
        diagnostics["reference_min_cosine_vs_fp32"] = min(
            float(reference[i] @ expected) for i, expected in fp32_reference.items()
        )
    return {
        **diagnostics,
        "docs": len(documents),
        "tokens": tokens,
        "length": {
            "mean": float(lengths.mean()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
        },
        "strategies": results,
    }


def _load(args: argparse.Namespace, device: str) -> tuple[EmbeddingModel, Affixes]:
    if args.random:
        shape = SHAPES[args.random]
        model = random_model(
            args.random, shape, device, args.seed, max_length=max(args.max_length, 512),
            packing=args.packing, compile=args.compile,
        )  # fmt: skip
        return model, Affixes.eos_appended(shape.eos)
    model = EmbeddingModel.load(
        ModelSettings(name_or_path=args.model, packing=args.packing, compile=args.compile), device=device
    )
    prefix, suffix = model.tokenizer.special_affixes()
    return model, Affixes(prefix=prefix, suffix=suffix, pad=model.tokenizer.pad_token_id)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark ``args`` describe and return the JSON-ready result (also written to ``--out``)."""
    device = pick_device(args.device)
    model, affixes = _load(args, device)
    vocab = int(model.module.config.vocab_size)
    embeddings = model.module.get_input_embeddings().weight
    params = sum(p.numel() for p in model.module.parameters() if p is not embeddings)
    peak = matmul_peak_tflops(device, getattr(torch, model.dtype))
    names = args.strategies.split(",")
    if args.full_precision_reductions:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    # A float32 copy of the network, for the diagnostic only (twice the weights' memory again).
    fp32_module = copy.deepcopy(model.module).float() if args.fp32_reference else None
    with tempfile.TemporaryDirectory() as folder:
        peer = None
        if PEER in names:
            tokenizer = id_tokenizer(vocab, affixes)
            peer = sentence_transformer_peer(model.module, tokenizer, affixes, model.pooling, Path(folder))
        strategies = build_strategies(model, peer, affixes, args.max_batch_tokens)
        workloads = {}
        for workload in args.workloads.split(","):
            documents = _workload(workload, args, vocab, affixes)
            checked = len(documents) if device == "cpu" else min(args.accuracy_sample, len(documents))
            sample = np.random.default_rng(args.seed).choice(len(documents), checked, replace=False)
            reference = {int(i): padded_forward(model, [documents[i]])[0] for i in sample}
            fp32_reference = None
            if fp32_module is not None:
                fp32_reference = {i: single_forward(model, fp32_module, documents[i]) for i in reference}
            workloads[workload] = _measure(
                strategies,
                names,
                documents,
                args,
                model,
                reference,
                fp32_reference,
                peak,
                2 * params,
                peer_tokenize(peer, affixes),
            )
    import sentence_transformers
    import transformers

    return {
        "command": shlex.join(["python", "-m", "pipeline", "bench", *args.argv]),
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "model": {
            "name": model.name,
            "dtype": model.dtype,
            "pooling": model.pooling,
            "packed": model.packed,
            "compiled": args.compile and device.startswith("cuda"),
            "non_embedding_params": params,
            "flops_per_token": 2 * params,
        },
        "max_batch_tokens": args.max_batch_tokens,
        "reduced_precision_reductions": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "matmul_peak_tflops": peak,
        "workloads": workloads,
        # The bar is on our embedder; the other strategies' figures are reported alongside.
        "accuracy_passed": all(w["strategies"]["ours"]["accuracy"]["passed"] for w in workloads.values())
        if "ours" in names
        else None,
    }


def _table(result: dict[str, Any]) -> str:
    peak = result["matmul_peak_tflops"]
    lines = [f"{result['model']['name']} on {result['device']} (matmul peak {peak:.3g} TFLOP/s)"]
    for workload, figures in result["workloads"].items():
        for name, s in figures["strategies"].items():
            ratio = s.get(f"ratio_vs_{PEER}", float("nan"))
            lines.append(
                f"  {workload:9} {name:22} {s['tokens_per_s']:>10.0f} tok/s {s['docs_per_s']:>8.1f} docs/s "
                f"{s['peak_fraction']:6.1%} of peak  x{ratio:.2f} vs ST  "
                f"min cos {s['accuracy']['min_cosine']:.5f}"
                + (
                    f" (vs fp32 {s['accuracy']['min_cosine_vs_fp32']:.5f})"
                    if "min_cosine_vs_fp32" in s["accuracy"]
                    else ""
                )
            )
        if "reference_min_cosine_vs_fp32" in figures:
            lines.append(
                f"  {workload:9} bf16 reference alone vs fp32: "
                f"min cos {figures['reference_min_cosine_vs_fp32']:.5f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """CLI entry: run, write the JSON, print a table; exit 1 when our embedder misses the accuracy bar."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.save_model is not None:
        if not args.random:
            parser.error("--save-model needs --random")
        device = pick_device(args.device)
        dtype = getattr(torch, compute_dtype("auto", device))
        save_random_model(SHAPES[args.random], args.save_model, device, dtype, args.seed)
        print(f"random {args.random} model written to {args.save_model}")
        return 0
    result = run(args)
    device = result["device"].lower().replace(" ", "-")
    name = args.random or Path(args.model).name
    out: Path = args.out or Path("tests/perf/results") / f"{name}-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(result))
    print(f"written to {out}")
    return 1 if result["accuracy_passed"] is False else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
