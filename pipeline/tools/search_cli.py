"""The ``search`` verb: its options and what it runs (one query through the serving side)."""

from __future__ import annotations

import argparse
import json

from pipeline.settings import Settings


def add_search_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``search`` and its options to the command line's verbs."""
    search = verbs.add_parser("search", help="search a dimension replica, by funnel, or as routing picks")
    search.add_argument("query", nargs="+")
    search.add_argument("--dim", type=int, help="replica dimension (default: the model's native one)")
    search.add_argument("--top-k", type=int, default=5)
    search.add_argument(
        "--instruction", help="query task for instruction-aware models (Qwen3); default: search.default_task"
    )
    search.add_argument(
        "--funnel",
        type=int,
        nargs="?",
        const=0,
        metavar="FACTOR",
        help="funnel search: shortlist top-k × FACTOR (default search.funnel_factor) on --dim (default "
        "the smallest replica), re-score with the full-dimension vectors",
    )
    search.add_argument(
        "--recall-target",
        type=float,
        help="let routing pick the fastest strategy reaching it, by the measured profile "
        "(search.profile_path; without one: the native replica)",
    )
    search.add_argument(
        "--latency-budget-ms",
        type=float,
        help="let routing pick the best strategy within it, by the measured profile "
        "(search.profile_path; without one: the native replica)",
    )
    search.add_argument("--per-document", action="store_true", help="keep each document's best chunk only")
    search.add_argument(
        "--rerank",
        type=int,
        metavar="N",
        help="rerank the top N hits of the strategy with the configured reranker ([reranker]) and show "
        "the top-k by rerank score, with both scores",
    )
    search.add_argument(
        "--filter",
        type=json_argument,
        metavar="JSON",
        help='only chunks matching this filter, e.g. \'{"metadata.lang": "de", "doc_id": {"nin": ["a"]}}\' '
        "(README: Filters)",
    )
    search.add_argument(
        "--tenant", help="the tenant to search (required when milvus.tenant_field is set; README: Tenants)"
    )


def json_argument(text: str) -> object:
    """A command-line value parsed as JSON (argparse reports the ValueError as a usage error)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc


async def search_verb(base: Settings, args: argparse.Namespace) -> int:
    """Embeds the query, searches as the options say and prints the hits; 0 on success."""
    from pipeline.milvus.filters import parse_filter
    from pipeline.milvus.tenants import check_tenant
    from pipeline.runtime.serving import open_query_side
    from pipeline.runtime.versions import serving_settings
    from pipeline.search.replicas import check_search_size, format_results, search
    from pipeline.search.rerank import open_reranker, require_reranker, rerank_results

    factor = None if args.funnel is None else (args.funnel or base.search.funnel_factor)
    shortlist = args.top_k if args.rerank is None else max(args.rerank, args.top_k)
    check_search_size(shortlist, factor, args.per_document)  # before Ray and the model start
    if args.rerank is not None:
        require_reranker(base)  # likewise
    parse_filter(args.filter)  # likewise: a bad filter is refused before anything starts
    check_tenant(base.milvus.tenant_field, args.tenant)  # and a missing tenant
    settings = await serving_settings(base, attempts=1)  # the version `versions switch` made serving
    async with open_query_side(settings, "search", base) as side:
        query = " ".join(args.query)
        results = await search(
            settings,
            side.embedder,
            side.sink,
            [query],
            args.dim,
            shortlist,
            args.instruction,
            funnel_factor=factor,
            recall_target=args.recall_target,
            latency_budget_ms=args.latency_budget_ms,
            per_document=args.per_document,
            where=args.filter,
            tenant=args.tenant,
        )
        if args.rerank is not None:
            async with open_reranker(base) as reranker:
                results = await rerank_results(reranker, results, args.top_k)
    print(format_results(results))
    return 0
