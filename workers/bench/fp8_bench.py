"""FP8 against bf16 on the same weights and the same real text: ``bench --real-text ... --dtype fp8``.

The bf16 model is loaded as for the real-text bench; its FP8 twin is a copy of the very same network
with the transformer blocks' linears quantized (:func:`workers.model.fp8.use_fp8_linears`), so the
two differ in nothing but FP8.  Both embed the chunked corpus the way an embedder actor does (one
tokenizer thread, the micro-batcher: :func:`workers.bench.realtext_bench.ours`), each after its own
warm-up (which covers torch.compile's compilation), and the run reports:

- tokens/s of each, tokenizer inside the timed pass, and the FP8 speed-up;
- every chunk's cosine between its FP8 and its bf16 vector (min, 1st percentile, mean);
- the top-10 neighbour agreement of corpus queries: the first line of 200 documents spread over the
  corpus, formatted as Qwen3-Embedding queries (instruction + EOS), searched among the corpus
  chunks' vectors of the same dtype; overlap@10 = shared neighbours / 10, averaged over queries.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workers.bench.realtext_bench import ForwardClock, ours, timed_pass
from workers.model.embedding_model import EmbeddingModel
from workers.model.fp8 import require_fp8, use_fp8_linears
from workers.prompts import format_query
from workers.settings import ModelSettings

QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERIES = 200
NEIGHBOURS = 10
COSINE_BAR = 0.995
"""Issue 13: every vector's cosine against the bf16 forward of the same weights."""
OVERLAP_BAR = 0.95
"""Issue 13: mean top-10 agreement of the corpus queries with bf16's."""
_QUERY_CHARS = (12, 200)  # a line shorter than this is a heading ("NAME"); longer lines are cut


def corpus_queries(documents: Sequence[Mapping[str, str]], count: int = QUERIES) -> list[str]:
    """The first line of 12+ characters (cut at 200) of ``count`` documents spread evenly over the corpus.

    For a manual page that is its NAME line ("pkeys - overview of Memory Protection Keys"), for a
    crawled page its title: what a user might type, in the document's language.
    """
    if not documents:
        return []
    picks = np.unique(np.linspace(0, len(documents) - 1, min(count, len(documents))).round().astype(int))
    queries = []
    for index in picks:
        lines = [line.strip() for line in documents[index]["text"].splitlines()]
        line = next((line for line in lines if len(line) >= _QUERY_CHARS[0]), lines[0] if lines else "")
        if line:
            queries.append(line[: _QUERY_CHARS[1]])
    return queries


def fp8_twin(
    model: EmbeddingModel,
    *,
    compile: bool,
    bf16_blocks: int = 0,
    allow_cpu: bool = False,
    fast_accumulation: bool = True,
) -> tuple[EmbeddingModel, dict[str, Any]]:
    """A copy of ``model``'s network with FP8 linears, as an EmbeddingModel on the same device, and what
    was quantized.  ConfigError off a GPU with FP8 unless ``allow_cpu`` (torch's CPU ``_scaled_mm``:
    the arithmetic and this bench's plumbing, slower than bf16 there)."""
    if not allow_cpu:
        require_fp8(model.device)
    module = copy.deepcopy(model.module)
    summary = use_fp8_linears(module, bf16_blocks=bf16_blocks, fast_accumulation=fast_accumulation)
    twin = EmbeddingModel(
        name=f"{model.name} fp8",
        model=module,
        tokenizer=model.tokenizer,
        pooling=model.pooling,
        device=model.device,
        dtype="fp8",
        packing="on" if model.packed else "off",
        compile=compile,
    )
    layers = {
        "quantized": summary.quantized,
        "kept": list(summary.kept),
        "bf16_blocks": bf16_blocks,
        "fast_accumulation": fast_accumulation,
    }
    return twin, layers


def neighbour_agreement(
    queries: Mapping[str, np.ndarray], corpus: Mapping[str, np.ndarray], k: int = NEIGHBOURS
) -> dict[str, Any]:
    """Overlap of each query's top-``k`` corpus rows under "fp8" and under "bf16" (unit vectors, dot)."""
    k = min(k, len(corpus["bf16"]))
    top = {name: np.argsort(-(queries[name] @ corpus[name].T), axis=1)[:, :k] for name in ("bf16", "fp8")}
    overlaps = np.array([len(set(a) & set(b)) / k for a, b in zip(top["fp8"], top["bf16"], strict=True)])
    mean = float(overlaps.mean()) if len(overlaps) else None
    return {
        "queries": len(overlaps),
        "k": k,
        "mean_overlap": mean,
        "min_overlap": float(overlaps.min()) if len(overlaps) else None,
        "top1_agreement": float(np.mean(top["fp8"][:, 0] == top["bf16"][:, 0])) if len(overlaps) else None,
        "bar": OVERLAP_BAR,
        "passed": mean is not None and mean >= OVERLAP_BAR,
    }


def cosine_figures(fp8: np.ndarray, bf16: np.ndarray) -> dict[str, Any]:
    """Every row's cosine between ``fp8`` and ``bf16`` (unit rows): min, 1st percentile, mean."""
    cosines = np.einsum("ij,ij->i", fp8.astype(np.float64), bf16.astype(np.float64))
    return {
        "vectors": len(cosines),
        "min": float(cosines.min()),
        "p1": float(np.percentile(cosines, 1)),
        "mean": float(cosines.mean()),
        "bar": COSINE_BAR,
        "passed": bool(cosines.min() >= COSINE_BAR),
    }


def compare(
    bf16: EmbeddingModel,
    fp8: EmbeddingModel,
    texts: list[str],
    queries: Sequence[str],
    *,
    budget: int,
    warmup: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Time bf16 then FP8 over ``texts`` (each after its own warm-up), then compare their vectors."""
    tokens = sum(len(row) for row in bf16.encode_ids(texts))  # untimed: the denominator only
    model_type = bf16.info().model_type
    asked = [format_query(ModelSettings(), model_type, query, QUERY_TASK) for query in queries]
    rng = np.random.default_rng(seed)
    warm = [texts[i] for i in rng.permutation(len(texts))[:warmup]]
    clock = ForwardClock(bf16.device)
    figures: dict[str, Any] = {}
    corpus: dict[str, np.ndarray] = {}
    query_vectors: dict[str, np.ndarray] = {}
    for name, model in (("bf16", bf16), ("fp8", fp8)):
        embed = ours(model, budget, clock)
        embed(warm)
        figures[name], corpus[name] = timed_pass(f"ours {name}", embed, texts, tokens, clock)
        query_vectors[name] = embed(asked) if asked else np.empty((0, model.native_dim), np.float32)
    figures["fp8"]["speedup_vs_bf16"] = figures["fp8"]["tokens_per_s"] / figures["bf16"]["tokens_per_s"]
    return {
        "chunks": len(texts),
        "tokens": tokens,
        "strategies": {"ours_bf16": figures["bf16"], "ours_fp8": figures["fp8"]},
        "cosine_fp8_vs_bf16": cosine_figures(corpus["fp8"], corpus["bf16"]),
        "neighbours_fp8_vs_bf16": neighbour_agreement(query_vectors, corpus),
        "query_task": QUERY_TASK,
        "query_examples": list(queries[:5]),
    }


def blocks_sweep(
    bf16: EmbeddingModel,
    texts: Sequence[str],
    blocks: Sequence[int],
    *,
    sample: int,
    budget: int,
    allow_cpu: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Cosines against bf16 of FP8 twins keeping the first N blocks in bf16, for each N of ``blocks``.

    Eager (no compile: seconds, not minutes, a twin) on ``sample`` chunks, against an eager bf16
    forward of the same network, so the cosines hold FP8's error alone.  The first row
    (``bf16_blocks`` None) is bf16 itself against a float32 copy (padded: the packed kernel is
    bf16-only): how far this network carries rounding errors, the floor FP8's figures scale from.
    """
    rng = np.random.default_rng(seed)
    chosen = [texts[i] for i in rng.choice(len(texts), min(sample, len(texts)), replace=False)]
    clock = ForwardClock(bf16.device)
    eager = EmbeddingModel(
        name=bf16.name,
        model=bf16.module,
        tokenizer=bf16.tokenizer,
        pooling=bf16.pooling,
        device=bf16.device,
        dtype=bf16.dtype,
        packing="on" if bf16.packed else "off",
    )
    reference = ours(eager, budget, clock)(chosen)
    full = EmbeddingModel(
        name=bf16.name,
        model=copy.deepcopy(bf16.module).float(),
        tokenizer=bf16.tokenizer,
        pooling=bf16.pooling,
        device=bf16.device,
        dtype="float32",
    )
    rows = [
        {
            "bf16_blocks": None,
            "what": "bf16 vs float32",
            **cosine_figures(reference, ours(full, budget, clock)(chosen)),
        }
    ]
    print(f"  bf16 vs float32: {rows[-1]}", flush=True)
    del full
    bf16.release_memory()
    # The first count once more with torch._scaled_mm's float32 promotion (no fast accumulation):
    # what the tensor cores' own accumulator costs in accuracy.
    variants = [(count, True) for count in blocks] + [(count, False) for count in blocks[:1]]
    for count, fast in variants:
        twin, layers = fp8_twin(
            bf16, compile=False, bf16_blocks=count, allow_cpu=allow_cpu, fast_accumulation=fast
        )
        vectors = ours(twin, budget, clock)(chosen)
        row = {"bf16_blocks": count, "fast_accumulation": fast, "fp8_linears": layers["quantized"]}
        rows.append({**row, **cosine_figures(vectors, reference)})
        print(f"  fp8 with {count} bf16 blocks: {rows[-1]}", flush=True)
        del twin
        bf16.release_memory()
    return rows
