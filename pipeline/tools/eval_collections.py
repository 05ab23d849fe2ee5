"""The replica collections of eval-recall: it drops only what it created.

eval-recall drops and rebuilds the replicas ``{prefix}_{dim}`` of its ``--prefix`` (a previous run's
documents would skew the exact top-k).  Guarantee: it never drops, nor measures on, a collection it did
not create.  Every collection it creates carries the collection property :data:`MARK`, and before it
drops or reads anything :func:`claim_prefix` refuses (ConfigError, saying what to do)

- a prefix equal to ``milvus.collection_prefix``: those are the replicas ``run`` writes;
- a prefix under which any collection ``{prefix}_{number}`` lacks the mark: someone else's replicas
  (another deployment's, or an eval-recall run from before the mark existed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.schema import collection_properties, ensure_replicas
from pipeline.settings import MilvusSettings
from workers.errors import ConfigError

MARK = {"embedstream.created_by": "eval-recall"}
"""The collection property eval-recall sets on every collection it creates, and checks before dropping one."""


def claim_prefix(settings: MilvusSettings, production_prefix: str) -> None:
    """Return when eval-recall may drop and rebuild the replicas of ``settings.collection_prefix``;
    raise ConfigError otherwise (see the module docstring).  ``production_prefix``: the configured
    ``milvus.collection_prefix``.  Only reads Milvus."""
    milvus = MilvusConnection(settings)
    try:
        _claim(milvus, settings.collection_prefix, production_prefix)
    finally:
        milvus.close()


def rebuild_replicas(settings: MilvusSettings, dims: Sequence[int], production_prefix: str) -> None:
    """Claim the prefix (:func:`claim_prefix`), drop its replicas of ``dims`` and create them again,
    empty, indexed, loaded and marked as eval-recall's."""
    milvus = MilvusConnection(settings)
    try:
        _claim(milvus, settings.collection_prefix, production_prefix)
        names = {dim: f"{settings.collection_prefix}_{dim}" for dim in dims}
        for name in names.values():
            if milvus.call(f"looking up {name}", "has_collection", name):
                milvus.call(f"dropping {name}", "drop_collection", name)
        ensure_replicas(milvus, settings, names, properties=MARK)
    finally:
        milvus.close()


def _claim(milvus: MilvusConnection, prefix: str, production_prefix: str) -> None:
    if prefix == production_prefix:
        raise ConfigError(
            f"eval-recall refuses the collection prefix {prefix!r}: it is milvus.collection_prefix, the "
            "replicas that `run` writes, and eval-recall drops and rebuilds the collections of its prefix. "
            "Give it a prefix of its own with --prefix (the default is 'recall')."
        )
    replica = re.compile(rf"{re.escape(prefix)}_\d+")
    names = sorted(n for n in milvus.call("listing collections", "list_collections") if replica.fullmatch(n))
    foreign = [n for n in names if not MARK.items() <= collection_properties(milvus, n).items()]
    if foreign:
        mark = ", ".join(f"{key}={value}" for key, value in MARK.items())
        raise ConfigError(
            f"eval-recall refuses the collection prefix {prefix!r}: these collections of it were not created "
            f"by eval-recall (they lack the collection property {mark}) and it would drop them: "
            f"{', '.join(foreign)}. Give it another --prefix; if they are yours to lose (e.g. left by an "
            "eval-recall from before this check), drop them first."
        )
