"""Where a compiled forward pass spends the GPU's time: the kernels of packed batches of real text.

A diagnostic for tests/perf/results, not a benchmark (figures of speed come from ``bench``): loads
random weights of a real Qwen3-Embedding shape + the real Qwen3 tokenizer as ``bench --real-text``
does (projections fused), and with ``--fp8`` its FP8 twin, compiles, warms up, and runs the corpus'
chunks in packed batches of ``--budget`` tokens under ``torch.profiler``.  It prints, per model, the
GPU time per token, the kernels grouped into GEMM / attention / FP8 quantization / other, and the 25
costliest kernels, and writes them as JSON to ``--out``.  Run on the GPU machine after
``source tests/perf/device_env.sh``:

    python3 tests/perf/profile_forward.py --shape qwen3-4b --fp8 --out $OUT/profile-4b.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.ingest.chunking import Chunker
from pipeline.tools.bench_realtext import DEFAULT_CHUNK_TOKENS, read_corpus
from workers.bench.fp8_bench import fp8_twin
from workers.bench.qwen3_folder import CONTEXT
from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.bench.realtext_bench import load_model
from workers.model.embedding_model import EmbeddingModel
from workers.model.tokenizer import TextTokenizer


def kernel_group(name: str) -> str:
    """A kernel's share of the work by its name (cuBLAS / CUTLASS GEMMs, flash attention, the rest)."""
    lowered = name.lower()
    if any(key in lowered for key in ("flash", "fmha", "attention", "sdpa")):
        return "attention"
    if any(key in lowered for key in ("gemm", "cutlass", "sm90_xmma", "nvjet", "f8f8bf16", "matmul")):
        return "gemm"
    if "triton" in lowered and ("amax" in lowered or "float8" in lowered or "fp8" in lowered):
        return "fp8_quantize"
    return "other"


def packed_batches(ids: list[list[int]], budget: int) -> list[list[list[int]]]:
    """``ids`` in order, cut into batches of at most ``budget`` tokens (a longer row alone)."""
    batches: list[list[list[int]]] = [[]]
    used = 0
    for row in ids:
        if batches[-1] and used + len(row) > budget:
            batches.append([])
            used = 0
        batches[-1].append(row)
        used += len(row)
    return batches


def profile_model(
    model: EmbeddingModel, batches: list[list[list[int]]], warmup: int, trace: Path | None = None
) -> dict[str, Any]:
    """Kernel time by group and the costliest kernels over ``batches`` after ``warmup`` of them; with
    ``trace``, a Chrome trace (host and GPU) of three more batches is written there."""
    dims = [model.native_dim]
    for batch in batches[:warmup]:
        model.embed_ids(batch, dims)
    timed = batches[warmup:]
    tokens = sum(len(row) for batch in timed for row in batch)
    cuda = model.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    # On a CPU (a dry run of this script) the operators stand in for the kernels.
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    with profile(activities=[activity]) as prof:
        started = time.perf_counter()
        for batch in timed:
            model.embed_ids(batch, dims)
        sync()
        wall = time.perf_counter() - started
    kernels = [event for event in prof.key_averages() if event.device_type == kind]

    def self_us(event: Any) -> float:
        return float(event.self_device_time_total if cuda else event.self_cpu_time_total)

    total_us = sum(self_us(event) for event in kernels) or 1.0
    groups: dict[str, float] = defaultdict(float)
    for event in kernels:
        groups[kernel_group(event.key)] += self_us(event)
    top = sorted(kernels, key=lambda event: -self_us(event))[:25]
    if trace is not None:
        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        with profile(activities=activities) as traced:
            for batch in timed[:3]:
                model.embed_ids(batch, dims)
            sync()
        traced.export_chrome_trace(str(trace))
    return {
        "batches": len(timed),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s_wall": tokens / wall,
        "kernel_s": total_us / 1e6,
        "kernel_us_per_token": total_us / tokens,
        "groups_share": {name: us / total_us for name, us in sorted(groups.items())},
        "top_kernels": [
            {
                "name": event.key[:160],
                "calls": event.count,
                "share": self_us(event) / total_us,
                "us_per_call": self_us(event) / max(event.count, 1),
            }
            for event in top
        ],
    }


def median_us(call: Callable[[], Any], repeats: int = 20) -> float:
    """Median microseconds of ``call`` on the GPU (CUDA events), after three untimed calls."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000)
    return sorted(samples)[len(samples) // 2]


def gemm_timings(rows: int, k: int, n: int) -> dict[str, float]:
    """Microseconds of ``(rows, k) @ (k, n)``: bf16 ``mm``, and ``torch._scaled_mm`` in e4m3 with
    row-wise and with tensor-wise scales (quantization not included)."""
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    xq, wq = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    row_a, row_b = torch.ones(rows, 1, device="cuda"), torch.ones(1, n, device="cuda")
    one = torch.ones((), device="cuda")

    def scaled(scale_a: torch.Tensor, scale_b: torch.Tensor) -> Callable[[], Any]:
        return lambda: torch._scaled_mm(
            xq, wq.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=True
        )

    return {
        "bf16_us": median_us(lambda: x @ w.t()),
        "fp8_rowwise_us": median_us(scaled(row_a, row_b)),
        "fp8_tensorwise_us": median_us(scaled(one, one)),
    }


def gemm_ceiling(module: torch.nn.Module, rows: int) -> dict[str, Any]:
    """:func:`gemm_timings` of each distinct linear shape of ``module`` at ``rows`` tokens: what FP8
    can give the GEMMs at most."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    figures: dict[str, Any] = {}
    for k, n in sorted({(m.in_features, m.out_features) for m in linears}):
        timings = gemm_timings(rows, k, n)
        figures[f"{k}x{n}"] = {
            **timings,
            "rowwise_speedup": timings["bf16_us"] / timings["fp8_rowwise_us"],
            "tensorwise_speedup": timings["bf16_us"] / timings["fp8_tensorwise_us"],
        }
        print(f"  gemm {rows}x{k}x{n}: " + ", ".join(f"{name} {us:.0f}" for name, us in timings.items()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen3-4b")
    parser.add_argument("--corpus", type=Path, default=Path(".cache/realtext-corpus.jsonl"))
    parser.add_argument("--chunks", type=int, default=1200, help="corpus chunks to run (evenly spread)")
    parser.add_argument("--budget", type=int, default=16384, help="tokens per packed batch")
    parser.add_argument("--warmup", type=int, default=12, help="batches before the profiled ones")
    parser.add_argument("--fp8", action="store_true", help="profile the FP8 twin too")
    parser.add_argument("--trace", action="store_true", help="Chrome traces of 3 batches beside --out")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script on a tiny shape")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tokenizer = TextTokenizer(embedding_tokenizer(), max_length=CONTEXT, pad_token_id=EOS_ID)
    chunker = Chunker(tokenizer, DEFAULT_CHUNK_TOKENS)
    texts = [chunk.text for document in read_corpus(args.corpus) for chunk in chunker.split(document["text"])]
    stride = max(1, len(texts) // args.chunks)
    texts = texts[::stride][: args.chunks]
    model = load_model(args.shape, None, args.device, compile=args.device.startswith("cuda"))
    batches = packed_batches(model.encode_ids(texts), args.budget)
    results: dict[str, Any] = {"shape": args.shape, "budget": args.budget, "device": args.device}
    if model.device.startswith("cuda"):
        results["gemm_ceiling"] = gemm_ceiling(model.module, args.budget)

    def trace(name: str) -> Path | None:
        return args.out.with_name(f"{args.out.stem}-{name}-trace.json") if args.trace else None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    results["bf16"] = profile_model(model, batches, args.warmup, trace("bf16"))
    if args.fp8:
        twin, layers = fp8_twin(model, compile=model.device.startswith("cuda"), allow_cpu=True)
        del model
        torch.cuda.empty_cache()
        results["fp8"] = {"layers": layers, **profile_model(twin, batches, args.warmup, trace("fp8"))}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name in ("bf16", "fp8"):
        if name not in results:
            continue
        figures = results[name]
        print(
            f"{name}: {figures['tokens_per_s_wall']:,.0f} tok/s (wall, profiler on), "
            f"{figures['kernel_us_per_token'] * 1000:.1f} ns of kernels a token; groups "
            + ", ".join(f"{group} {share:.1%}" for group, share in figures["groups_share"].items())
        )
        for kernel in figures["top_kernels"][:15]:
            share, calls, us = kernel["share"], kernel["calls"], kernel["us_per_call"]
            print(f"  {share:6.1%} {calls:6d} x {us:8.1f} us  {kernel['name'][:100]}")


if __name__ == "__main__":
    main()
