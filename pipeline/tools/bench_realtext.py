"""`python -m pipeline bench --real-text FILE`: the embedder on real multilingual text, real tokenizer.

FILE is a JSONL corpus (``{"id", "lang", "text"}`` a line; ``tests/perf/build_realtext_corpus.py``
builds one from Debian's manual pages in eight languages and crawled Chinese pages).  Every document
is chunked by the project's own :class:`~pipeline.ingest.chunking.Chunker` at ``chunking.max_tokens``
(default: what the model takes, at most 512), the chunks of all languages are mixed, and
:mod:`workers.bench.realtext_bench` times text to vectors, tokenizer included, for us and the
sentence-transformers peer, then ours per language.  A long document (``--long-doc-tokens``, 32,000
by default, cut from the corpus itself) is chunked at the default limit (the parts must cover it) and
at the full 32,768-token context, where it must be one chunk and one forward pass of its own.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.ingest.chunking import Chunker
from pipeline.settings import load_settings
from workers.model.tokenizer import TextTokenizer

DEFAULT_CHUNK_TOKENS = 512
RANDOM_SHAPES = ("qwen3-0.6b", "qwen3-4b", "qwen3-8b", "tiny-real")
STRATEGIES = ("ours", "sentence_transformers", "ours_one_batch_in_flight", "ours_unfused")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline bench --real-text", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--real-text", type=Path, required=True, metavar="FILE", help="JSONL corpus")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model folder (e.g. written by workers.bench.qwen3_folder)")
    which.add_argument(
        "--random", choices=RANDOM_SHAPES, help="random weights of a shape + the real tokenizer"
    )
    parser.add_argument("--max-tokens", type=int, help="chunk limit (default: chunking.max_tokens, else 512)")
    parser.add_argument(
        "--strategies",
        default="ours,sentence_transformers",
        help=f"comma-separated, of: {', '.join(STRATEGIES)} (ours runs with batching.batches_in_flight "
        "= 2, the default, ours_one_batch_in_flight with 1; ours_unfused with model.fuse_projections "
        "off, the peer always so)",
    )
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA only)")
    parser.add_argument("--warmup-chunks", type=int, default=64)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="timed passes of each strategy, taking turns; each reports its fastest",
    )
    parser.add_argument("--accuracy-sample", type=int, default=64)
    parser.add_argument("--long-doc-tokens", type=int, default=32000, help="0: no long document")
    parser.add_argument("--limit-docs", type=int, help="first N documents of each language only")
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument(
        "--dtype",
        choices=("auto", "fp8"),
        default="auto",
        help="fp8: ours in bf16 and in FP8 on the same weights, speed and agreement "
        "(workers.bench.fp8_bench); no peer, no per-language passes, no long document",
    )
    parser.add_argument(
        "--fp8-sweep",
        default="",
        metavar="N,N,...",
        help="with --dtype fp8: also the cosines of FP8 with N leading blocks in bf16, for each N "
        "(eager, on --accuracy-sample chunks)",
    )
    parser.add_argument("--fp8-bf16-blocks", type=int, default=0, help="model.fp8_bf16_blocks of the FP8 run")
    parser.add_argument(
        "--fp8-on-cpu",
        action="store_true",
        help="run FP8 through torch's CPU _scaled_mm instead of refusing (checks the plumbing; no speed-up)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON result (default tests/perf/results/realtext-<model>.json)"
    )
    return parser


def read_corpus(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """The corpus' documents in file order (at most ``limit`` a language)."""
    documents: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            document = json.loads(line)
            seen[document["lang"]] = seen.get(document["lang"], 0) + 1
            if limit is None or seen[document["lang"]] <= limit:
                documents.append(document)
    return documents


def long_text(documents: Sequence[dict[str, str]], tokenizer: TextTokenizer, tokens: int) -> str:
    """The corpus' documents joined until ``tokens`` tokens, cut after exactly that many."""
    parts: list[str] = []
    count = 0
    for document in documents:
        parts.append(document["text"])
        count += tokenizer.count_tokens(document["text"]) + 1
        if count > tokens + 64:
            break
    text = "\n\n".join(parts)
    spans = tokenizer.token_spans(text)
    if len(spans) < tokens:
        raise ValueError(f"the corpus holds {len(spans)} tokens, fewer than the long document's {tokens}")
    cut = text[: spans[tokens - 1][1]]
    # A cut inside a byte-level character's tokens may merge differently: trim to the exact count.
    while tokenizer.count_tokens(cut) > tokens:
        cut = cut[:-1]
    return cut


def covers(text: str, parts: Sequence[str]) -> bool:
    """Whether ``parts`` in order are ``text`` less whitespace at their boundaries."""
    return "".join(text.split()) == "".join("".join(parts).split())


def chunk_corpus(
    documents: Sequence[dict[str, str]], chunker: Chunker
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Every document's chunks (texts, languages), languages interleaved as they come, and figures."""
    texts: list[str] = []
    langs: list[str] = []
    started = time.perf_counter()
    for document in documents:
        for chunk in chunker.split(document["text"]):
            texts.append(chunk.text)
            langs.append(document["lang"])
    figures = {"documents": len(documents), "chunks": len(texts), "seconds": time.perf_counter() - started}
    return texts, langs, figures


def _chunking_tokenizer(args: argparse.Namespace) -> TextTokenizer:
    from workers.bench.qwen3_folder import CONTEXT

    if args.random:
        from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer

        return TextTokenizer(embedding_tokenizer(), max_length=CONTEXT, pad_token_id=EOS_ID)
    from workers.bench.qwen3_folder import folder_context
    from workers.model.tokenizer import load_text_tokenizer
    from workers.settings import ModelSettings

    return load_text_tokenizer(ModelSettings(name_or_path=args.model, max_length=folder_context(args.model)))


def _figures(args: argparse.Namespace, model: Any, workload: Any, folder: Path) -> dict[str, Any]:
    """Ours and the peer on the workload, ours per language, the long document."""
    from workers.bench import realtext_bench

    # The same weights again (seeded), with the projections as transformers builds them: what the peer
    # runs and the references come from.
    separate = realtext_bench.load_model(
        args.random, args.model, model.device, compile=args.compile, fuse_projections=False
    )
    return realtext_bench.run(
        model,
        workload,
        separate=separate,
        budget=args.max_batch_tokens,
        strategies=args.strategies.split(","),
        warmup=args.warmup_chunks,
        accuracy_sample=args.accuracy_sample,
        folder=folder,
        rounds=args.rounds,
    )


def _fp8_figures(
    args: argparse.Namespace, model: Any, documents: Sequence[dict[str, str]], texts: list[str]
) -> dict[str, Any]:
    """Ours in bf16 and in FP8 on the same weights: the eager sweep first (no compilation), then the
    timed comparison.  A failure of the latter is recorded under "error" (the device run gets one
    try, and the sweep's figures are worth keeping); main then exits 1."""
    import traceback

    from workers.bench import fp8_bench

    figures: dict[str, Any] = {}
    if args.fp8_sweep:
        figures["fp8_bf16_blocks_sweep"] = fp8_bench.blocks_sweep(
            model,
            texts,
            [int(n) for n in args.fp8_sweep.split(",")],
            sample=args.accuracy_sample,
            budget=args.max_batch_tokens,
            allow_cpu=args.fp8_on_cpu,
        )
    try:
        twin, figures["fp8_layers"] = fp8_bench.fp8_twin(
            model, compile=args.compile, bf16_blocks=args.fp8_bf16_blocks, allow_cpu=args.fp8_on_cpu
        )
        queries = fp8_bench.corpus_queries(documents)
        figures.update(
            fp8_bench.compare(
                model, twin, texts, queries, budget=args.max_batch_tokens, warmup=args.warmup_chunks
            )
        )
    except Exception as exc:  # recorded and turned into exit 1, never dropped
        traceback.print_exc()
        figures["error"] = f"{type(exc).__name__}: {exc}"
        return figures
    print(
        f"  fp8 x{figures['strategies']['ours_fp8']['speedup_vs_bf16']:.2f} of bf16; cosine "
        f"{figures['cosine_fp8_vs_bf16']}; neighbours {figures['neighbours_fp8_vs_bf16']}",
        flush=True,
    )
    return figures


def main(argv: Sequence[str], config: Path | None = None) -> int:
    """CLI entry: chunk, run, write the JSON, print the figures; exit 1 when a check fails."""
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = set(args.strategies.split(",")) - set(STRATEGIES)
    if unknown:
        parser.error(
            f"--strategies: unknown {', '.join(sorted(unknown))}; choose from {', '.join(STRATEGIES)}"
        )
    if args.dtype == "fp8" and not args.fp8_on_cpu:
        from workers.errors import ConfigError
        from workers.model.fp8 import require_fp8
        from workers.model.loading import pick_device

        try:
            require_fp8(pick_device(args.device))  # before minutes of chunking and loading
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    settings = load_settings(config)
    max_tokens = args.max_tokens or settings.chunking.max_tokens or DEFAULT_CHUNK_TOKENS
    tokenizer = _chunking_tokenizer(args)
    documents = read_corpus(args.real_text, args.limit_docs)
    texts, langs, chunking = chunk_corpus(documents, Chunker(tokenizer, max_tokens))
    long_document: dict[str, Any] = {}
    full_context_chunks: list[str] = []
    if args.long_doc_tokens:
        context = tokenizer.max_length - tokenizer.num_special_tokens
        if args.long_doc_tokens > context:
            print(f"the long document is cut to the model's context: {context} tokens", flush=True)
        text = long_text(documents, tokenizer, min(args.long_doc_tokens, context))
        parts = [chunk.text for chunk in Chunker(tokenizer, max_tokens).split(text)]
        # max_chars lifted: one model input of the whole context.  Through the pipeline the row limit
        # (16,000 characters, Milvus' 65,535-byte text field) still splits it (README, Not promised).
        whole = Chunker(tokenizer, tokenizer.max_length - tokenizer.num_special_tokens, max_chars=len(text))
        full_context_chunks = [chunk.text for chunk in whole.split(text)]
        rows = Chunker(tokenizer, tokenizer.max_length - tokenizer.num_special_tokens).split(text)
        long_document = {
            "text_tokens": tokenizer.count_tokens(text),
            "chunks_at_max_tokens": len(parts),
            "parts_cover_text": covers(text, parts),
            "chunks_at_full_context": len(full_context_chunks),
            "rows_at_full_context_with_default_max_chars": len(rows),
        }
    print(
        f"{chunking['documents']} documents -> {chunking['chunks']} chunks of <= {max_tokens} tokens "
        f"in {chunking['seconds']:.1f} s; long document {long_document}",
        flush=True,
    )

    from workers.bench import realtext_bench
    from workers.model.loading import pick_device

    device = pick_device(args.device)
    model = realtext_bench.load_model(args.random, args.model, device, compile=args.compile)
    workload = realtext_bench.RealTextWorkload(texts, langs, full_context_chunks)
    if args.dtype == "fp8":
        figures = _fp8_figures(args, model, documents, texts)
    else:
        with tempfile.TemporaryDirectory() as folder:
            figures = _figures(args, model, workload, Path(folder))
        figures["long_document"] = {**long_document, **(figures["long_document"] or {})}
    result = {
        "command": shlex.join(["python", "-m", "pipeline", "bench", *argv]),
        "what": (
            "random weights of the real Qwen3-Embedding shape + the real Qwen3 tokenizer, real text"
            if args.random
            else f"the model folder {args.model}, real text"
        ),
        **realtext_bench.environment(device),
        "model": {
            "name": model.name,
            "dtype": model.dtype,
            "packed": model.packed,
            "compiled": args.compile,
            "fused_projections": realtext_bench.has_fused_projections(model),
        },
        "max_tokens": max_tokens,
        "max_batch_tokens": args.max_batch_tokens,
        "corpus": str(args.real_text),
        "chunking": chunking,
        **figures,
    }
    name = args.random or Path(args.model).name
    suffix = "-fp8" if args.dtype == "fp8" else ""
    out: Path = args.out or Path("tests/perf/results") / f"realtext-{name}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {out}")
    long = figures.get("long_document")
    ok = not long or (long.get("parts_cover_text") and long.get("chunks_at_full_context") == 1)
    ok = ok and "error" not in figures
    return 0 if ok else 1
