"""`python -m pipeline <verb>` (console script `embedstream`): parses the command line and dispatches.

Each verb's work lives in its subsystem (``runtime`` assembles and runs, ``ops`` manages the
local stack and status, ``tools`` holds demo, bench and eval-recall); this module only turns
arguments into calls and exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.settings import load_settings
from pipeline.tools.eval_cli import add_eval_recall_verb, eval_recall_verb
from pipeline.tools.search_cli import add_search_verb, search_verb
from pipeline.tools.versions_cli import add_run_options, add_versions_verb, settings_of_verb, versions_verb
from workers.errors import ConfigError, InputTooLong, PipelineError

log = logging.getLogger("pipeline")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (environment variables override it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser(
        "up", help="start the local stack (broker, Milvus Lite server, Ray head) in the background"
    )
    verbs.add_parser("down", help="stop the local stack")
    run = verbs.add_parser("run", help="consume the topic into the replicas until interrupted")
    run.add_argument(
        "--until-idle", type=float, metavar="SECONDS", help="return once nothing arrived for SECONDS"
    )
    add_run_options(run)
    run.add_argument(
        "--consumer-actors",
        type=int,
        metavar="N",
        help="run N consumer-group members as Ray actors (default scaling.consumer_actors; 0: here)",
    )
    add_versions_verb(verbs)
    produce = verbs.add_parser("produce", help="send JSONL events or .txt/.md documents to the topic")
    produce.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    produce.add_argument("--topic", help="topic to send to (default: kafka.topic)")
    add_search_verb(verbs)
    status = verbs.add_parser("status", help="broker, Milvus, Ray, consumer lag and rows per replica")
    status.add_argument(
        "--watch", action="store_true", help="live view: throughput, lag, pool, rows, dead letters"
    )
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period")
    status.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N refreshes")
    add_eval_recall_verb(verbs)
    serve = verbs.add_parser("serve", help="HTTP API: OpenAI-compatible /v1/embeddings and /v1/search")
    serve.add_argument("--host", help="listen address (default api.host)")
    serve.add_argument("--port", type=int, help="listen port (default api.port)")
    verbs.add_parser("demo", help="start the stack, ingest the bundled corpus, run a few searches")
    verbs.add_parser(
        "stop-embedders",
        help="stop the embedder actors of ray.namespace (they outlive workers: pool.detached)",
    )
    verbs.add_parser(
        "dashboard", help="the local stack's Ray dashboard: its URL and the token to log in with"
    )
    # Its options belong to workers.bench.embedder_bench (with --end-to-end: pipeline.tools.bench_pipeline;
    # with --scaling: pipeline.tools.bench_scaling; with --real-text: pipeline.tools.bench_realtext, and with
    # --chunking too: pipeline.tools.bench_chunking),
    # which parses what follows the verb.
    verbs.add_parser(
        "bench",
        add_help=False,
        help="embedder throughput vs sentence-transformers; with --end-to-end the whole pipeline "
        "vs the bare embedder; with --scaling N,M the pool at N and M actors; with --real-text FILE "
        "real multilingual text through the real tokenizer (with --chunking: the chunking stage alone); "
        "with --rerank reranker pairs/s vs a plain "
        "padded forward (see --help)",
    )
    return parser


async def _dispatch(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.verb == "up":
        from pipeline.ops import stack

        for service in await asyncio.to_thread(stack.up, settings):
            print(service)
        print(stack.dashboard_login(settings))
        return 0
    if args.verb == "dashboard":
        from pipeline.ops import stack

        token = stack.dashboard_token(settings)
        print(f"http://127.0.0.1:{settings.stack.dashboard_port}\ntoken: {token}")
        return 0
    if args.verb == "down":
        from pipeline.ops import stack

        for service in await asyncio.to_thread(stack.down, settings):
            print(service)
        return 0
    if args.verb == "serve":  # before Milvus or Ray are asked anything: the refusal is immediate
        from pipeline.search.auth import check_exposure

        check_exposure(settings.api, args.host or settings.api.host)
    if args.verb not in ("up", "down", "demo", "dashboard"):
        from pipeline.ops.stack import with_local_ray

        settings = with_local_ray(settings)  # no-op when ray.address is configured
    base = settings  # as configured: version 1 (see pipeline.runtime.versions)
    settings = await settings_of_verb(base, args)
    if args.verb == "versions":
        return await versions_verb(settings, args)
    if args.verb == "run":
        from pipeline.runtime.ingestion import run_ingestion

        return await run_ingestion(
            settings, args.until_idle, args.consumer_actors, base=base, adopt=args.adopt
        )
    if args.verb == "produce":
        from pipeline.ingest.produce import produce

        await produce(settings.kafka, args.paths, args.topic)
        return 0
    if args.verb == "search":
        return await search_verb(settings, args)
    if args.verb == "serve":
        from pipeline.runtime.serving import serve

        await serve(settings, args.host, args.port, base)
        return 0
    if args.verb == "eval-recall":
        return await eval_recall_verb(settings, args)
    if args.verb == "status":
        from pipeline.ops.status import collect_status

        if args.watch:
            from pipeline.ops.status_watch import watch

            await watch(settings, args.interval, args.count)
            return 0
        print((await collect_status(settings)).render(settings))
        return 0
    if args.verb == "stop-embedders":
        from pipeline.runtime.embedders import stop_embedders

        stopped = await asyncio.to_thread(stop_embedders, settings)
        print(f"stopped {len(stopped)} embedder actors in namespace {settings.ray.namespace!r}: {stopped}")
        return 0
    if args.verb == "demo":
        from pipeline.tools.demo import run_demo

        return await run_demo(settings)
    raise AssertionError(args.verb)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "pymilvus", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    """``bench``: its options belong to the benchmark that ``rest`` picks (see the parser)."""
    if "--end-to-end" in rest:
        from pipeline.tools import bench_pipeline

        _configure_logging(args.verbose)
        return bench_pipeline.main(rest, config=args.config)
    if any(arg == "--scaling" or arg.startswith("--scaling=") for arg in rest):
        from pipeline.tools import bench_scaling

        _configure_logging(args.verbose)
        return bench_scaling.main(rest, config=args.config)
    if "--chunking" in rest:  # before --real-text, which it takes too
        from pipeline.tools import bench_chunking

        return bench_chunking.main(rest, config=args.config)
    if any(arg == "--real-text" or arg.startswith("--real-text=") for arg in rest):
        from pipeline.tools import bench_realtext

        return bench_realtext.main(rest, config=args.config)
    if "--rerank" in rest:  # the reranker benchmark: torch in this process, like the embedder's
        from workers.bench import rerank_bench

        return rerank_bench.main(rest)
    # The embedder benchmark lives on the Ray side: it loads the model (torch) in this process.
    from workers.bench import embedder_bench

    return embedder_bench.main(rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad configuration or input, 1 for other failures)."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.verb != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.verb != "bench":
        _configure_logging(args.verbose)
    try:
        if args.verb == "bench":
            return _bench(args, rest)
        return asyncio.run(_dispatch(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InputTooLong as exc:  # a query over the model's limit, raised in an actor or here
        print(f"error: {getattr(exc, 'cause', exc)}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
