"""The command line of versions (:mod:`pipeline.runtime.versions`): `run --into-version / --adopt`, the
`versions` verb, and which version each verb works on.  Kept apart from :mod:`pipeline.cli` so that
module stays one screen of dispatch; nothing heavy is imported until a verb runs."""

from __future__ import annotations

import argparse
import contextlib

from pipeline.settings import Settings
from workers.errors import ConfigError, PipelineError


def version_number(text: str) -> int:
    """A version as the command line gives it: ``2`` or ``v2``."""
    number = int(text.removeprefix("v"))
    if number < 1:
        raise argparse.ArgumentTypeError("versions are numbered from 1")
    return number


def add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--into-version",
        type=version_number,
        metavar="N",
        help="fill version N (collections {prefix}_vN_<dim>, group {group_id}-vN, Ray namespace "
        "{namespace}-vN) from the start of the topic, while the serving version keeps serving; then "
        "`versions switch N` (default: write the serving version)",
    )
    run.add_argument(
        "--adopt",
        action="store_true",
        help="record the configured model in replicas made before collections recorded it (once, "
        "after upgrading; only if that model made them)",
    )


def add_versions_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    versions = verbs.add_parser(
        "versions", help="replica sets per model: list them, switch search/serve/run to one, drop one"
    )
    versions.add_argument("action", choices=("list", "switch", "drop"))
    versions.add_argument("number", nargs="?", type=version_number, metavar="N", help="the version")
    versions.add_argument("--force", action="store_true", help="switch even if the version has not caught up")


async def settings_of_verb(base: Settings, args: argparse.Namespace) -> Settings:
    """The settings ``args.verb`` works on: ``run --into-version N`` fills version N; ``run``, ``serve``
    and ``status`` work on the serving version (``status`` on the configured one while Milvus cannot
    say which serves); other verbs on ``base``, the settings as configured."""
    from pipeline.runtime.versions import fill_settings, serving_settings

    if args.verb in ("run", "serve"):
        into = getattr(args, "into_version", None)
        return fill_settings(base, into) if into else await serving_settings(base)
    if args.verb == "status":
        # status reports Milvus' state itself; meanwhile the configured version stands in.
        with contextlib.suppress(PipelineError):
            return await serving_settings(base, attempts=1)
    return base


async def versions_verb(settings: Settings, args: argparse.Namespace) -> int:
    """`versions list | switch N [--force] | drop N`."""
    from pipeline.ops import versions

    if args.action == "list":
        print(await versions.list_report(settings))
        return 0
    if args.number is None:
        raise ConfigError(f"`versions {args.action}` needs the version number")
    if args.action == "switch":
        print(await versions.switch(settings, args.number, force=args.force))
    else:
        print(await versions.drop(settings, args.number))
    return 0
