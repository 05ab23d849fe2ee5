"""`python -m workers.bench.oom_recovery`: a batch too large for the device is split and retried, and
every text still gets the vector it gets alone.

Random weights of a Qwen3-Embedding shape (:mod:`workers.bench.setup`), ``--texts`` random documents
of ``--length`` tokens, all submitted at once to a :class:`~workers.batcher.MicroBatcher` over an
:class:`~workers.model.embedding_model.EmbeddingModel` whose token budget holds all of them: the first
forward pass does not fit.  No Ray.  On CUDA the out-of-memory is real (``--memory-gb`` caps what this
process may allocate, ``torch.cuda.set_per_process_memory_fraction``, so that a moderate batch
overflows it; 0 leaves the whole device); on the CPU one is injected through a forward pre-hook
(``--inject-oom-above TOKENS``), raising ``torch.OutOfMemoryError`` like the CUDA allocator does.

Passes when at least one forward pass ran out of memory, no text failed, and each text's vector has
cosine >= 0.999 with the one computed alone.  Writes a JSON result to ``--out``; exit 1 on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.batcher import MicroBatcher
from workers.bench.setup import SHAPES, Affixes, make_documents, random_model
from workers.errors import ForwardOutOfMemory
from workers.model.loading import pick_device
from workers.settings import BatchSettings

MIN_COSINE = 0.999


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers.bench.oom_recovery", description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-8b")
    parser.add_argument("--texts", type=int, default=64, help="documents, all in one submit")
    parser.add_argument("--length", type=int, default=4096, help="tokens of each document (EOS included)")
    parser.add_argument(
        "--budget", type=int, default=0, help="token budget (default: every text in one batch)"
    )
    parser.add_argument(
        "--memory-gb", type=float, default=28.0, help="CUDA only: cap of this process; 0: none"
    )
    parser.add_argument("--inject-oom-above", type=int, default=0, help="raise OOM for batches over N tokens")
    parser.add_argument("--packing", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def _inject_oom(module: torch.nn.Module, above: int) -> None:
    """A forward pre-hook raising ``torch.OutOfMemoryError`` for inputs of more than ``above`` tokens."""

    def hook(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.numel() > above:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {ids.numel()} tokens > {above})")

    module.register_forward_pre_hook(hook, with_kwargs=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, drive, check; the JSON-ready result (see the module docstring)."""
    device = pick_device(args.device)
    shape = SHAPES[args.shape]
    affixes = Affixes.eos_appended(shape.eos)
    model = random_model(
        args.shape, shape, device, args.seed, max_length=max(args.length, 512), packing=args.packing
    )
    cuda = device.startswith("cuda")
    if cuda and args.memory_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, args.memory_gb * 2**30 / total), torch.device(device).index or 0
        )
    if args.inject_oom_above:
        _inject_oom(model.module, args.inject_oom_above)
    documents = make_documents(np.full(args.texts, args.length), shape.vocab, affixes, args.seed)
    budget = args.budget or args.texts * args.length
    settings = BatchSettings(
        max_batch_tokens=budget, max_wait_ms=0, max_queued_tokens=budget, sort_window=args.texts
    )
    dim = shape.hidden
    out_of_memory: list[dict[str, Any]] = []

    def forward(
        ids: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None
    ) -> dict[int, np.ndarray]:
        try:
            return model.embed_ids(ids, dims, adapter)
        except ForwardOutOfMemory as exc:
            out_of_memory.append({"texts": len(ids), "tokens": exc.cost, "error": str(exc)[:300]})
            raise

    async def drive() -> tuple[dict[int, np.ndarray], Any]:
        probe = [documents[0][-8:]]
        batcher = MicroBatcher(
            forward, settings, packed=model.packed, probe=lambda: model.embed_ids(probe, (dim,))
        )
        try:
            return await batcher.submit(documents, (dim,)), batcher.stats()
        finally:
            await batcher.close()

    started = time.perf_counter()
    vectors, stats = asyncio.run(drive())
    batched_s = time.perf_counter() - started
    memory = _cuda_memory(device) if cuda else {}
    alone = np.concatenate([model.embed_ids([doc], (dim,))[dim] for doc in documents])
    cosines = (vectors[dim] * alone).sum(axis=1)  # both unit rows
    passed = bool(out_of_memory) and stats.failed_texts == 0 and float(cosines.min()) >= MIN_COSINE
    return {
        "passed": passed,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "model": {"shape": args.shape, "dtype": model.dtype, "packed": model.packed, "hidden": dim},
        "workload": {"texts": args.texts, "length": args.length, "tokens": args.texts * args.length},
        "memory_cap_gb": args.memory_gb if cuda else None,
        "injected_oom_above": args.inject_oom_above or None,
        "budget": {"configured": budget, "after": stats.batch_budget},
        "out_of_memory": out_of_memory,
        "forward_passes": {
            "ok": stats.batches,
            "failed": stats.failed_batches,
            "oom_splits": stats.oom_splits,
        },
        "failed_texts": stats.failed_texts,
        "batched_seconds": round(batched_s, 2),
        "min_cosine_vs_alone": float(cosines.min()),
        "memory": memory,
    }


def _cuda_memory(device: str) -> dict[str, float]:
    gib = 2**30
    return {
        "max_allocated_gib": torch.cuda.max_memory_allocated(device) / gib,
        "reserved_after_gib": torch.cuda.memory_reserved(device) / gib,
        "weights_gib": torch.cuda.memory_allocated(device) / gib,
    }


def main(argv: Sequence[str]) -> int:
    """CLI entry: run, print and write the JSON; exit 1 unless it passed."""
    args = _parser().parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
