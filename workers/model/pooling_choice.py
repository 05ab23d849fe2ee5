"""Which pooling a model gets: the setting, else its sentence-transformers config, else by model type."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.errors import ConfigError
from workers.model.tokenizer import ModelFiles
from workers.settings import Pooling

if TYPE_CHECKING:
    from workers.model.pooling import PoolingMode

# sentence-transformers pooling modes this project reproduces, by their sentence-transformers name.
_ST_POOLING: dict[str, PoolingMode] = {"lasttoken": "last_token", "mean": "mean", "cls": "cls"}


def resolve_pooling(requested: Pooling, files: ModelFiles, model_type: str) -> PoolingMode:
    """The pooling to apply; raises ConfigError when 'auto' meets a pooling this project lacks.

    An explicit setting wins.  'auto' follows the model folder's sentence-transformers Pooling
    config when there is one, else last-token for Qwen3 models and mean for the rest.
    """
    if requested != "auto":
        return requested
    if files.st_pooling_modes is not None:
        modes = files.st_pooling_modes
        if len(modes) != 1 or modes[0] not in _ST_POOLING:
            raise ConfigError(
                f"the model's sentence-transformers pooling {list(modes)} is not supported; "
                f"set model.pooling to one of {sorted(_ST_POOLING.values())}"
            )
        return _ST_POOLING[modes[0]]
    return "last_token" if model_type.startswith("qwen3") else "mean"
