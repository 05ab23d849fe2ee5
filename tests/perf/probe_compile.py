"""Where a packed forward's time goes, and what torch.compile changes (GPU only).

Runs the mixed workload of ``python -m pipeline bench`` through packed forwards of ~16k tokens on a
random-weight model, eager and under ``torch.compile(dynamic=True)``, prints tokens/s of each,
the top CUDA kernels of one eager batch, and the worst cosine between compiled and eager pooled rows.
"""

from __future__ import annotations

import sys
import time

import torch

from workers.bench.setup import SHAPES, Affixes, lognormal_lengths, make_documents, random_qwen3
from workers.model.packing import pack, packed_forward, pool_packed, use_packed_attention


def main(shape_name: str, budget: int = 16384) -> None:
    shape = SHAPES[shape_name]
    model = random_qwen3(shape, "cuda", torch.bfloat16)
    use_packed_attention(model)
    documents = make_documents(
        lognormal_lengths(1024, 0), shape.vocab, Affixes((), (shape.eos,), shape.eos), 0
    )
    batches: list[list[list[int]]] = [[]]
    for document in sorted(documents, key=len):
        if batches[-1] and sum(map(len, batches[-1])) + len(document) > budget:
            batches.append([])
        batches[-1].append(document)
    tokens = sum(map(len, documents))

    def run(forward: torch.nn.Module) -> tuple[float, list[torch.Tensor]]:
        pooled = []
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                packed = pack(batch, "cuda")
                pooled.append(
                    pool_packed(
                        packed_forward(forward, model.config.layer_types, packed),
                        packed.cu_seqlens,
                        "last_token",
                    )
                )
        torch.cuda.synchronize()
        return tokens / (time.perf_counter() - started), pooled

    run(model)
    eager, reference = run(model)
    print(f"{shape_name} eager: {eager:.0f} tok/s over {len(batches)} batches")
    with (
        torch.inference_mode(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
    ):
        packed = pack(batches[len(batches) // 2], "cuda")
        packed_forward(model, model.config.layer_types, packed)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    compiled = torch.compile(model, dynamic=True)
    started = time.perf_counter()
    run(compiled)
    print(f"compile + first pass: {time.perf_counter() - started:.0f} s")
    fast, pooled = run(compiled)
    worst = min(
        torch.nn.functional.cosine_similarity(a, b).min().item()
        for a, b in zip(pooled, reference, strict=True)
    )
    print(f"{shape_name} compiled: {fast:.0f} tok/s (x{fast / eager:.2f}); min cosine vs eager {worst:.5f}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
