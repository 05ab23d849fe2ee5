"""The embedder on real text through the real tokenizer: ours vs the sentence-transformers peer.

:mod:`pipeline.tools.bench_realtext` chunks the corpus with the project's chunker and hands the
chunks here.  Both sides get *text*: the tokenizer's time is inside every timed pass.  Ours runs
as an embedder actor does (:class:`~workers.actor.EmbedderActor`): requests of 32 texts, tokenized
on ``batching.tokenize_threads`` host threads while earlier requests' forward passes run, merged by the
:class:`~workers.batcher.MicroBatcher`.  The peer is ``SentenceTransformer.encode(batch_size=32)``
on the very same model object and the same tokenizer.

GPU-busy share of a timed pass, two readings: ``forward_share`` (CUDA events around every forward
call: time inside forward passes over wall time, an upper bound on busy) and ``nvml_busy`` (mean of
nvidia-smi's utilization samples every 100 ms, when nvidia-smi is there).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from workers.batcher import MicroBatcher
from workers.bench.qwen3_folder import CONTEXT, REAL_SHAPES, folder_context
from workers.bench.qwen3_tokenizer import EOS, EOS_ID, embedding_tokenizer
from workers.bench.setup import random_model
from workers.bench.strategies import padded_forward, single_forward
from workers.model.embedding_model import EmbeddingModel
from workers.model.fused import FusedAttention
from workers.model.fused import fuse_projections as fuse
from workers.settings import BatchSettings, ModelSettings

REQUEST_TEXTS = 32
"""Texts per request to our batcher, and the peer's batch size."""


@dataclass
class RealTextWorkload:
    """Chunks of the corpus (text, language), and the long document's chunk(s) at the full context."""

    texts: list[str]
    langs: list[str]
    long_document: list[str] = field(default_factory=list)


def environment(device: str) -> dict[str, str]:
    """What a result was measured on: the device's name and the versions that make the figures."""
    import platform

    import sentence_transformers
    import transformers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def load_model(
    random: str | None,
    path: str | None,
    device: str,
    *,
    compile: bool,
    packing: Literal["auto", "on", "off"] = "auto",
    fuse_projections: bool = True,
) -> EmbeddingModel:
    """Random weights of a real shape + the real tokenizer (``random``, seeded: every call gives the same
    weights), or the folder ``path``; with its projections fused as the worker loads it, or not
    (``fuse_projections=False``: the network as transformers builds it, for the peer and references)."""
    if random is not None:
        model = random_model(
            f"{random}+qwen3-tokenizer", REAL_SHAPES[random], device, max_length=CONTEXT,
            packing=packing, compile=compile, tokenizer=embedding_tokenizer(),
        )  # fmt: skip
        if fuse_projections:
            fuse(model.module)  # in place, before the model's first (compiled) call
        return model
    if path is None:
        raise ValueError("load_model needs a random shape or a model folder")
    settings = ModelSettings(
        name_or_path=path,
        max_length=folder_context(path),
        packing=packing,
        compile=compile,
        fuse_projections=fuse_projections,
    )
    return EmbeddingModel.load(settings, device=device)


def has_fused_projections(model: EmbeddingModel) -> bool:
    """Whether ``model`` runs fused q/k/v and gate/up projections (:mod:`workers.model.fused`)."""
    return any(isinstance(module, FusedAttention) for module in model.module.modules())


class ForwardClock:
    """CUDA events around each call of a forward function: seconds the GPU spent inside them."""

    def __init__(self, device: str) -> None:
        self._cuda = device.startswith("cuda")
        self._events: list[tuple[Any, Any]] = []

    def wrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._cuda:
                return forward(*args, **kwargs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = forward(*args, **kwargs)
            end.record()
            self._events.append((start, end))
            return out

        return timed

    def reset(self) -> None:
        self._events.clear()

    def seconds(self) -> float | None:
        if not self._cuda:
            return None
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self._events) / 1000


class NvmlSampler:
    """nvidia-smi's GPU utilization every 100 ms while running (None without nvidia-smi)."""

    def __enter__(self) -> NvmlSampler:
        self.samples: list[float] = []
        self._process = None
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            out, _ = self._process.communicate(timeout=10)
            self.samples = [float(line) for line in out.split() if line.strip().isdigit()]

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def ours(
    model: EmbeddingModel, budget: int, clock: ForwardClock, batches_in_flight: int = 2
) -> Callable[[list[str]], np.ndarray]:
    """Texts to vectors the way an embedder actor does it (its tokenizer threads, the batcher)."""
    settings = BatchSettings(
        max_batch_tokens=budget, max_queued_tokens=2**62, batches_in_flight=batches_in_flight
    )
    forward, launch = clock.wrap(model.embed_ids), clock.wrap(model.launch_ids)

    async def run(texts: list[str]) -> np.ndarray:
        batcher = MicroBatcher(forward, settings, packed=model.packed, launch_batch=launch)
        loop = asyncio.get_running_loop()
        dims = (model.native_dim,)

        async def request(chunk: list[str]) -> dict[int, np.ndarray]:
            ids = await loop.run_in_executor(tokenize, model.encode_ids, chunk)
            return await batcher.submit(ids, dims)

        with ThreadPoolExecutor(settings.tokenize_threads, thread_name_prefix="tokenize") as tokenize:
            try:
                requests = [texts[i : i + REQUEST_TEXTS] for i in range(0, len(texts), REQUEST_TEXTS)]
                results = await asyncio.gather(*(request(r) for r in requests))
            finally:
                await batcher.close()
        return np.concatenate([result[model.native_dim] for result in results])

    return lambda texts: asyncio.run(run(texts))


def sentence_transformers_peer(model: EmbeddingModel, folder: Any, clock: ForwardClock) -> Any:
    """sentence-transformers on ``model``'s own network and the real tokenizer (setup's stub swap)."""
    from workers.bench.setup import Affixes, sentence_transformer_peer

    affixes = Affixes.eos_appended(EOS_ID)
    peer = sentence_transformer_peer(
        model.module, embedding_tokenizer(), affixes, model.pooling, folder, pad_token=EOS
    )
    transformer = peer[0]
    transformer.forward = clock.wrap(transformer.forward)
    return peer


def timed_pass(
    name: str, embed: Callable[[list[str]], np.ndarray], texts: list[str], tokens: int, clock: ForwardClock
) -> tuple[dict[str, Any], np.ndarray]:
    """One timed pass of ``embed`` over ``texts``: tokens/s and the two GPU-busy readings."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    clock.reset()
    with NvmlSampler() as sampler:
        started = time.perf_counter()
        vectors = embed(texts)
        sync()
        seconds = time.perf_counter() - started
    inside = clock.seconds()
    figures = {
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "chunks_per_s": len(texts) / seconds,
        "forward_share": None if inside is None else inside / seconds,
        "nvml_busy": sampler.mean(),
    }
    print(f"  {name:24} {tokens / seconds:>10,.0f} tok/s  {seconds:6.1f} s", flush=True)
    return figures, vectors


def cosines(vectors: np.ndarray, reference: dict[int, np.ndarray]) -> dict[str, Any]:
    values = [float(vectors[i] @ expected) for i, expected in reference.items()]
    return {"checked": len(values), "min_cosine": min(values)}


def long_document(
    model: EmbeddingModel, separate: EmbeddingModel, chunks: Sequence[str], budget: int
) -> dict[str, Any]:
    """The long document chunked at the full context: one forward of its own, vs a plain forward of
    ``separate`` (the same weights, unfused)."""
    if len(chunks) != 1:
        return {"chunks": len(chunks), "one_chunk": False}
    ids = model.encode_ids(list(chunks))[0]
    clock = ForwardClock(model.device)
    if model.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    vector = ours(model, budget, clock)(list(chunks))[0]
    seconds = time.perf_counter() - started
    plain = single_forward(separate, separate.module, ids)
    peak = torch.cuda.max_memory_allocated() / 2**30 if model.device.startswith("cuda") else None
    return {
        "chunks": 1,
        "one_chunk": True,
        "tokens": len(ids),
        "seconds": seconds,
        "peak_gib": peak,
        "cosine_vs_plain_forward": float(vector @ plain),
    }


def run(
    model: EmbeddingModel,
    workload: RealTextWorkload,
    *,
    separate: EmbeddingModel,
    budget: int,
    strategies: Sequence[str],
    warmup: int,
    accuracy_sample: int,
    folder: Any,
    seed: int = 0,
    rounds: int = 1,
) -> dict[str, Any]:
    """Time ``strategies`` on the mixed workload, then ours per language: "ours" (with
    ``batching.batches_in_flight = 2``, the default), "sentence_transformers", "ours_one_batch_in_flight"
    (with 1: each forward pass queued only once the previous one's vectors are back) and "ours_unfused"
    (ours on ``separate``).  ``separate`` is ``model``'s weights with the projections transformers
    builds (:func:`load_model` with ``fuse_projections=False``): the peer runs it, and the accuracy
    references come from it.  With
    ``rounds`` > 1 the strategies take turns, round after round, and each reports its fastest round
    (``rounds_tokens_per_s`` holds all of them): a clock or cache that changes during the run then
    shows as rounds that disagree, rather than as a difference between strategies."""
    texts, langs = workload.texts, workload.langs
    lengths = [len(row) for row in model.encode_ids(texts)]  # untimed: the denominator only
    tokens = sum(lengths)
    clock = ForwardClock(model.device)
    embedders: dict[str, Callable[[list[str]], np.ndarray]] = {}
    if "ours" in strategies:
        embedders["ours"] = ours(model, budget, clock)
    if "ours_one_batch_in_flight" in strategies:
        embedders["ours_one_batch_in_flight"] = ours(model, budget, clock, batches_in_flight=1)
    if "ours_unfused" in strategies:
        embedders["ours_unfused"] = ours(separate, budget, clock)
    if "sentence_transformers" in strategies:
        peer = sentence_transformers_peer(separate, folder, clock)
        embedders["sentence_transformers"] = lambda batch: peer.encode(
            batch, batch_size=REQUEST_TEXTS, normalize_embeddings=True, show_progress_bar=False
        )
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(texts), min(accuracy_sample, len(texts)), replace=False)
    reference = {int(i): padded_forward(separate, separate.encode_ids([texts[i]]))[0] for i in sample}
    warm = [texts[i] for i in rng.permutation(len(texts))[:warmup]]
    results: dict[str, Any] = {}
    for embed in embedders.values():
        embed(warm)
    for _ in range(rounds):
        for name, embed in embedders.items():
            figures, vectors = timed_pass(name, embed, texts, tokens, clock)
            best = results.get(name)
            seen = (
                [*best["rounds_tokens_per_s"], figures["tokens_per_s"]] if best else [figures["tokens_per_s"]]
            )
            if best is None or figures["tokens_per_s"] > best["tokens_per_s"]:
                best = {**figures, "accuracy": cosines(vectors, reference)}
            results[name] = {**best, "rounds_tokens_per_s": seen}
    for peer_name in ("sentence_transformers", "ours_one_batch_in_flight", "ours_unfused"):
        if "ours" in results and peer_name in results:
            results["ours"][f"ratio_vs_{peer_name}"] = (
                results["ours"]["tokens_per_s"] / results[peer_name]["tokens_per_s"]
            )
    per_language: dict[str, Any] = {}
    if "ours" in embedders:
        for lang in dict.fromkeys(langs):
            rows = [i for i, row_lang in enumerate(langs) if row_lang == lang]
            figures, _ = timed_pass(
                f"ours {lang}",
                embedders["ours"],
                [texts[i] for i in rows],
                sum(lengths[i] for i in rows),
                clock,
            )
            per_language[lang] = {"chunks": len(rows), "tokens": sum(lengths[i] for i in rows), **figures}
    return {
        "chunks": len(texts),
        "tokens": tokens,
        "chunk_tokens": {
            "mean": float(np.mean(lengths)),
            "median": float(np.median(lengths)),
            "max": int(max(lengths)),
        },
        "strategies": results,
        "per_language_ours": per_language,
        "long_document": long_document(model, separate, workload.long_document, budget)
        if workload.long_document
        else None,
    }
