"""`python -m pipeline bench --chunking --real-text FILE`: the consumer's chunking stage alone, real text.

Every document of a real-text corpus (``bench --real-text``'s JSONL), ``--copies`` times over, becomes
an upsert event; the events are cut into units of ``--unit-docs`` and each unit is built by
:func:`~pipeline.ingest.units.build_unit` (parse, chunk, count), as a consumer does, on a pool of
``--threads`` threads (``consumer.chunk_threads``); ``--threads 1,4`` measures each in turn (threads
beyond the number of units have nothing to do).  Tokens/s counts the documents' own tokens (counted
beforehand, outside the timing) over the wall time of building every unit.  The tokenizer is Qwen3's
pinned one (``make tokenizer``; Qwen3-Embedding's, as the 0.6B/4B/8B use) or, with ``--model DIR``,
that model's.  No torch, no Kafka, no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from pipeline.ingest.chunking import Chunker
from pipeline.ingest.units import build_unit
from pipeline.tools.bench_realtext import read_corpus
from workers.model.tokenizer import TextTokenizer
from workers.settings import ModelSettings

DEFAULT_OUT = Path("tests/perf/results/chunking-realtext-cpu.json")


@dataclass(frozen=True)
class _Record:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline bench --chunking", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--chunking", action="store_true", required=True)
    parser.add_argument("--real-text", type=Path, required=True, metavar="FILE", help="JSONL corpus")
    parser.add_argument("--threads", default="1,4", metavar="N,N,...", help="chunk threads, each in turn")
    parser.add_argument("--max-tokens", type=int, default=512, help="chunking.max_tokens")
    parser.add_argument(
        "--unit-docs",
        type=int,
        default=128,
        help="events a unit (a poll's 500 records over 4 partitions; at most consumer.max_batch_events)",
    )
    parser.add_argument(
        "--copies", type=int, default=1, help="the corpus this many times over (more units for more threads)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed passes per thread count (best and median)"
    )
    parser.add_argument("--model", help="a model folder whose tokenizer to use (default: Qwen3's, pinned)")
    parser.add_argument("--label", default="", help="where this ran (kept in the result)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result")
    return parser


def _tokenizer(model: str | None) -> TextTokenizer:
    if model is None:
        from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer

        return TextTokenizer(embedding_tokenizer(), max_length=32768, pad_token_id=EOS_ID)
    from workers.model.tokenizer import load_text_tokenizer

    return load_text_tokenizer(ModelSettings(name_or_path=model))


def units_of(texts: Sequence[str], unit_docs: int) -> list[list[_Record]]:
    """One upsert event a text (ids ``doc-{i}``, offsets in order), cut into units of ``unit_docs``."""
    records = [
        _Record(i, f"doc-{i}".encode(), json.dumps({"op": "upsert", "id": f"doc-{i}", "text": text}).encode())
        for i, text in enumerate(texts)
    ]
    return [records[i : i + unit_docs] for i in range(0, len(records), unit_docs)]


def time_pass(
    units: Sequence[Sequence[_Record]], chunker: Chunker, threads: int, special_tokens: int
) -> dict[str, float]:
    """Build every unit on ``threads`` threads; wall seconds, chunks, and the units' own stage times."""
    model = ModelSettings()
    tp = TopicPartition("bench", 0)
    with ThreadPoolExecutor(threads, thread_name_prefix="chunk") as pool:
        started = time.perf_counter()
        built = list(pool.map(lambda part: build_unit(tp, 0, part, chunker, model, special_tokens), units))
        wall = time.perf_counter() - started
    if any(unit.dead_letters for unit in built):
        raise ValueError(f"{sum(len(u.dead_letters) for u in built)} documents could not be chunked")
    return {
        "seconds": wall,
        "chunks": sum(len(unit.texts) for unit in built),
        "chunk_seconds_summed": sum(unit.chunk_seconds for unit in built),
        "parse_seconds_summed": sum(unit.parse_seconds for unit in built),
    }


def main(argv: Sequence[str], config: Path | None = None) -> int:
    """CLI entry: time the passes, print one line per thread count, write the JSON."""
    args = _parser().parse_args(argv)
    tokenizer = _tokenizer(args.model)
    texts = [document["text"] for document in read_corpus(args.real_text)] * args.copies
    tokens = sum(tokenizer.count_tokens(text) for text in texts)
    chars = sum(map(len, texts))
    chunker = Chunker(tokenizer, args.max_tokens)
    units = units_of(texts, args.unit_docs)
    time_pass(units[:1], chunker, 1, tokenizer.num_special_tokens)  # warm the tokenizer's caches
    runs: list[dict[str, Any]] = []
    for threads in (int(n) for n in args.threads.split(",")):
        passes = [
            time_pass(units, chunker, threads, tokenizer.num_special_tokens) for _ in range(args.repeat)
        ]
        seconds = [p["seconds"] for p in passes]
        best, median = min(seconds), statistics.median(seconds)
        run = {
            "threads": threads,
            "seconds": seconds,
            "tokens_per_s_best": tokens / best,
            "tokens_per_s_median": tokens / median,
            "documents_per_s_best": len(texts) / best,
            "chunks": passes[0]["chunks"],
            "chunk_seconds_summed": [p["chunk_seconds_summed"] for p in passes],
        }
        runs.append(run)
        print(
            f"threads={threads}: {tokens / best / 1e3:.1f}k tokens/s best "
            f"({tokens / median / 1e3:.1f}k median), {len(texts) / best:.0f} documents/s, "
            f"{run['chunks']} chunks; passes {', '.join(f'{s:.2f}' for s in seconds)} s",
            flush=True,
        )
    result = {
        "command": shlex.join(["python", "-m", "pipeline", "bench", *argv]),
        "what": "build_unit (parse, chunk, count) of every document of a real-text corpus, units on a "
        "thread pool as the consumer builds them; tokens = the documents' own tokens",
        "label": args.label,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tokenizers": _version("tokenizers"),
        "tokenizer": args.model or "Qwen3 (pinned, workers.bench.qwen3_tokenizer)",
        "corpus": str(args.real_text),
        "documents": len(texts),
        "characters": chars,
        "tokens": tokens,
        "max_tokens": args.max_tokens,
        "unit_docs": args.unit_docs,
        "units": len(units),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "(unset: on)"),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {args.out}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
