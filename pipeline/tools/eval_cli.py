"""The ``eval-recall`` verb: its options and what it runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from pipeline.settings import Settings


def add_eval_recall_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``eval-recall`` and its options to the command line's verbs."""
    evaluate = verbs.add_parser(
        "eval-recall", help="recall@k and latency of every replica and of funnel mode on a real corpus"
    )
    corpus = evaluate.add_mutually_exclusive_group()
    corpus.add_argument("--man-dir", type=Path, help="manual pages root (default /usr/share/man)")
    corpus.add_argument("--text-dir", type=Path, help="a folder of plain text files instead of manual pages")
    evaluate.add_argument("--sections", default="158", help="manual sections to read (default 158)")
    evaluate.add_argument("--lang", help="translation folder under the manual root, e.g. fr, de, zh_CN")
    evaluate.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip pages whose file name matches"
    )
    evaluate.add_argument("--max-docs", type=int, default=1000, help="documents to index (seeded sample)")
    evaluate.add_argument("--queries", type=Path, help="query file (default: the bundled sample queries)")
    evaluate.add_argument(
        "--title-queries", type=int, default=50, help="also query the title lines of this many documents"
    )
    evaluate.add_argument(
        "--factors", default="10,20,50", help="funnel factors, comma-separated (default 10,20,50)"
    )
    evaluate.add_argument("--top-k", type=int, default=10)
    evaluate.add_argument(
        "--prefix",
        default="recall",
        help="collection prefix of eval-recall's own replicas, dropped and rebuilt (refused when it is "
        "milvus.collection_prefix or holds collections eval-recall did not create)",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--reuse-index", action="store_true", help="measure on the collections a previous run built"
    )
    evaluate.add_argument(
        "--out", type=Path, default=Path("recall-results"), help="folder for recall.json/.md/.png"
    )
    evaluate.add_argument(
        "--rerank",
        type=int,
        default=50,
        metavar="N",
        help="with a reranker configured ([reranker]): report the latency it adds reranking each query's "
        "top N (default 50; 0: not measured)",
    )


async def eval_recall_verb(settings: Settings, args: argparse.Namespace) -> int:
    """Builds eval-recall's replicas (or reuses them), measures and writes the report; 0 on success."""
    from pipeline.tools.eval_recall import SAMPLE_QUERIES, EvalOptions, render_table, run_eval

    options = EvalOptions(
        out_dir=args.out,
        man_dir=args.man_dir,
        sections=args.sections,
        lang=args.lang,
        exclude=tuple(args.exclude),
        max_docs=args.max_docs,
        text_dir=args.text_dir,
        queries_file=args.queries or SAMPLE_QUERIES,
        title_queries=args.title_queries,
        factors=tuple(int(f) for f in args.factors.split(",") if f.strip()),
        top_k=args.top_k,
        collection_prefix=args.prefix,
        seed=args.seed,
        reuse_index=args.reuse_index,
        rerank=args.rerank,
    )
    from pipeline.runtime.serving import open_query_side
    from pipeline.search.rerank import open_reranker
    from pipeline.tools.eval_collections import claim_prefix

    # run_eval checks this too; here a refused prefix costs no pool start (a model load per GPU).
    scratch = settings.milvus.model_copy(update={"collection_prefix": args.prefix})
    await asyncio.to_thread(claim_prefix, scratch, settings.milvus.collection_prefix)
    async with contextlib.AsyncExitStack() as stack:
        side = await stack.enter_async_context(open_query_side(settings, "eval", check_replicas=False))
        reranker = None
        if settings.reranker is not None and args.rerank > 0:
            reranker = await stack.enter_async_context(open_reranker(settings))
        report = await run_eval(settings, side.pool, side.sink.dims, options, reranker)
    print(render_table(report))
    print(f"written: {args.out}/recall.json, recall.md, recall.png")
    return 0
