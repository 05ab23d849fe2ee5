"""Which model made a replica: a stamp in every collection, checked before it is written or searched.

Vectors of two models (or two checkpoints of one model, or one model pooled two ways) live in different
spaces: a collection that mixes them answers searches with nonsense, and no error says so.  So every
replica this project creates carries, as collection properties under ``embedstream.*``, the
:class:`ModelStamp` of the model that fills it, and :func:`check_stamps` refuses (ConfigError saying
what to do) a worker or a search whose model's stamp differs.

Guarantees:

* A replica created by :func:`~pipeline.milvus.schema.ensure_replicas` with ``properties=stamp.properties()``
  carries the stamp from its creation on; nothing writes into or searches a stamped replica whose stamp
  differs from the loaded model's.
* A replica without a stamp (created before stamps existed) is used only while it is empty, or after an
  operator said which model made it (``run --adopt``, which stamps it with the configured model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.schema import collection_properties, count_rows
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo
from workers.model.tokenizer import resolve_model_files
from workers.settings import ModelSettings

PREFIX = "embedstream."
NORMALIZATION = "matryoshka-cut-then-l2"
"""How the stored vectors are normalized: the pooled vector cut to the replica's width, then L2-normalized."""
UNKNOWN = "unknown"
_SAMPLES = 16  # evenly spaced reads per weights file
_SAMPLE_BYTES = 64 * 1024
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


@dataclass(frozen=True)
class ModelStamp:
    """What makes the vectors of a replica: two stamps that differ mean two vector spaces."""

    model: str
    """The model's configured name or path."""
    revision: str
    """Digest of its files (:func:`weights_digest`), or "unknown" where they cannot be read here."""
    pooling: str
    normalization: str
    native_dim: int
    instruction_template: str
    """How a document's instruction is joined to its text (it changes the vectors of such documents)."""
    adapter: str = ""
    """The LoRA adapter merged into the model's weights (``path@digest``), if any."""
    named_adapter: str = ""
    """The unmerged LoRA adapter of ``model.adapters`` the vectors were made with, ``name@digest``, if any:
    queries of the replica are embedded with it (:func:`recorded_adapter`)."""

    @property
    def adapter_name(self) -> str | None:
        """The name of :attr:`named_adapter` (None for the base model)."""
        return self.named_adapter.rsplit("@", 1)[0] if self.named_adapter else None

    def properties(self) -> dict[str, str]:
        """The collection properties that record this stamp."""
        return {PREFIX + key: str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> ModelStamp | None:
        """The stamp recorded in ``properties``; None for a collection created without one."""
        if PREFIX + "model" not in properties:
            return None
        values: dict[str, Any] = {f.name: properties.get(PREFIX + f.name, "") for f in fields(cls)}
        values["native_dim"] = int(values["native_dim"] or 0)
        return cls(**values)

    def differences(self, other: ModelStamp) -> list[str]:
        """What differs between ``self`` (recorded) and ``other`` (loaded), as 'field: a != b'.

        The model's name or path is compared only when a revision is unknown on either side: the same
        files under another path (another node, another mount) are the same model."""
        skip = {"model"} if UNKNOWN not in (self.revision, other.revision) else {"revision"}
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if k not in skip and mine[k] != theirs[k]]

    def describe(self) -> str:
        adapter = f", adapter {self.adapter}" if self.adapter else ""
        adapter += f", LoRA adapter {self.named_adapter}" if self.named_adapter else ""
        return (
            f"{self.model} (revision {self.revision[:16]}, {self.pooling} pooling, native dim "
            f"{self.native_dim}{adapter})"
        )


def weights_digest(path: str) -> str:
    """A digest of the model folder ``path``: its config, tokenizer and the size and sampled bytes of
    each weights file (16 reads of 64 KiB spread over it, so a 16 GB checkpoint costs ~1 MB of reads).

    Two checkpoints of one architecture differ in their bytes almost everywhere, so the samples tell
    them apart; a checkpoint that differs only between the samples is not told apart (name it with
    another path to keep it apart).  "unknown" when ``path`` is not a folder here (a hub id outside
    the local cache, or a model folder on the GPU nodes only)."""
    root = Path(path)
    if not root.is_dir():
        return UNKNOWN
    digest = hashlib.sha256()
    small = [root / name for name in ("config.json", "tokenizer.json", "adapter_config.json")]
    for file in small:
        if file.is_file():
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    weights = sorted({f for pattern in _WEIGHTS for f in root.glob(pattern) if f.is_file()})
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            for i in range(_SAMPLES + 1):
                handle.seek(max(0, (size - _SAMPLE_BYTES) * i // _SAMPLES))
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest() if weights else UNKNOWN


def check_stamps(
    connection: MilvusConnection,
    names: Mapping[int, str],
    stamp: ModelStamp,
    *,
    adopt: bool = False,
    fix: str,
) -> None:
    """Raise ConfigError unless every replica in ``names`` (dim -> collection, all existing) was made by
    ``stamp``'s model.  An unstamped replica passes when empty (it is stamped now) or with ``adopt``
    (stamped as ``stamp``'s); otherwise it is refused.  ``fix``: what the message tells the user to do
    to move to the loaded model."""
    for name in names.values():
        recorded = ModelStamp.from_properties(collection_properties(connection, name))
        if recorded is None:
            if adopt or count_rows(connection, name) == 0:
                connection.call(
                    f"stamping {name}", "alter_collection_properties", name, properties=stamp.properties()
                )
                continue
            raise ConfigError(
                f"Milvus collection {name} holds vectors but does not record which model made them (it was "
                f"created before collections did). If {stamp.describe()} made them, record it once with "
                f"`python -m pipeline run --adopt`; if another model did, {fix}"
            )
        if differences := recorded.differences(stamp):
            raise ConfigError(
                f"Milvus collection {name} was made by {recorded.describe()}, but the loaded model is "
                f"{stamp.describe()} ({'; '.join(differences)}). Vectors of two models cannot share a "
                f"collection. To keep the old model, set model.name_or_path (and model.pooling, "
                f"model.adapter) back; to move to the new one, {fix}"
            )


def recorded_adapter(connection: MilvusConnection, names: Mapping[int, str]) -> str | None:
    """The name of the LoRA adapter the first stamped replica of ``names`` that exists records (None: the
    base model, or no stamp): what its queries are embedded with when ``model.adapter`` is unset.  Replicas
    that record different adapters are refused afterwards by :func:`check_stamps`."""
    for name in names.values():
        if connection.call(f"looking up {name}", "has_collection", name):
            recorded = ModelStamp.from_properties(collection_properties(connection, name))
            if recorded is not None:
                return recorded.adapter_name
    return None


def stamp_of(info: ModelInfo, model: ModelSettings, adapter: str | None = None) -> ModelStamp:
    """The stamp of the model the actors loaded (``info``) with the settings that frame its inputs, its
    vectors made with LoRA adapter ``adapter`` (None: none); ConfigError when the actors lack it."""
    named = ""
    if adapter is not None:
        loaded: dict[str, str] = getattr(info, "adapters", {})  # absent from an older actor's ModelInfo
        label = loaded.get(adapter)
        if label is None:
            raise ConfigError(
                f"LoRA adapter {adapter!r} is not loaded by the embedder actors (they load "
                f"{sorted(loaded)}): add it to model.adapters"
            )
        named = f"{adapter}@{label.rsplit('@', 1)[-1]}"
    try:
        revision = weights_digest(resolve_model_files(info.name).path)
    except ConfigError:
        revision = UNKNOWN
    return ModelStamp(
        model=info.name,
        revision=revision,
        pooling=info.pooling,
        normalization=NORMALIZATION,
        native_dim=info.native_dim,
        instruction_template=model.instruction_template,
        adapter=str(getattr(info, "adapter", None) or ""),  # ModelInfo.adapter, where this version has it
        named_adapter=named,
    )
