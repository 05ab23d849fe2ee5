"""LoRA domain adapters read from PEFT folders, and merged into the base weights at load: no cost per token.

A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) adds
``scale * B @ A`` to each target linear layer, ``scale = lora_alpha / r`` (``/ sqrt(r)`` with
rsLoRA).  Merged once, the model runs exactly as the base did and gives what PEFT's unmerged
adapter gives, within the rounding of the weights' dtype.  What a plain merge cannot reproduce
(DoRA, trained biases, extra trained modules, embedding or convolution adapters, per-module
ranks) is refused with the setting that carries it, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.errors import ConfigError

if TYPE_CHECKING:
    import torch

_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
# PEFT saves the weights under the wrapper's names: "base_model.model." then the wrapped model's
# own path, which starts with "model." when the adapter was trained on a *ForCausalLM head.
_PEFT_PREFIX = "base_model.model."
_HEAD_PREFIX = "model."


@dataclass(frozen=True)
class MergedAdapter:
    """What was merged: the folder, a digest of its files (the adapter's identity) and the layers."""

    path: str
    digest: str
    layers: int

    def label(self) -> str:
        """``path@digest``: names the adapter wherever the model is named (actor info, collections)."""
        return f"{self.path}@{self.digest}"


@dataclass(frozen=True)
class LoraWeights:
    """An adapter folder as read: its scale and each target layer's ``(A, B)`` by the layer's name."""

    folder: Path
    scale: float
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    digest: str

    def label(self) -> str:
        """``path@digest``: the adapter's folder and identity."""
        return f"{self.folder}@{self.digest}"


def read_lora(folder: Path) -> LoraWeights:
    """The LoRA adapter in ``folder``; ConfigError for what plain LoRA cannot express (module docstring)."""
    from safetensors.torch import load_file

    config = _read_config(folder)
    scale = _scale(config, folder)
    weights_file = folder / _WEIGHTS
    if not weights_file.is_file():
        raise ConfigError(
            f"LoRA adapter {folder}: {_WEIGHTS} is missing (only safetensors adapters are read)"
        )
    pairs = _pairs(load_file(str(weights_file)), folder)
    return LoraWeights(folder=folder, scale=scale, pairs=pairs, digest=_digest(folder))


def lora_targets(model: torch.nn.Module, lora: LoraWeights) -> dict[str, torch.nn.Linear]:
    """The linear layer of ``model`` each of ``lora``'s pairs lands on, by the pair's name.

    ConfigError when a name matches no linear layer or an A/B shape does not fit its layer: the
    adapter was trained on another base model, and applying part of it gives vectors of neither."""
    modules = dict(model.named_modules())
    targets: dict[str, torch.nn.Linear] = {}
    for name, (down, up) in sorted(lora.pairs.items()):
        layer = _target(name, modules, lora.folder)
        rank = down.shape[0]
        if tuple(down.shape) != (rank, layer.in_features) or tuple(up.shape) != (layer.out_features, rank):
            raise ConfigError(
                f"LoRA adapter {lora.folder}: {name} is {tuple(up.shape)} @ {tuple(down.shape)}, the "
                f"model's layer {tuple(layer.weight.shape)}: another base model?"
            )
        targets[name] = layer
    return targets


def merge_lora(model: torch.nn.Module, folder: Path) -> MergedAdapter:
    """Add the LoRA adapter in ``folder`` to ``model``'s weights in place; ConfigError if it cannot be.

    Every adapter tensor must land on a linear layer of ``model`` (:func:`lora_targets`).
    """
    import torch

    lora = read_lora(folder)
    targets = lora_targets(model, lora)
    with torch.no_grad():
        for name, layer in targets.items():
            down, up = lora.pairs[name]
            delta = (up.to(torch.float32) @ down.to(torch.float32)) * lora.scale
            merged = layer.weight.to(torch.float32) + delta.to(layer.weight.device)
            layer.weight.copy_(merged.to(layer.weight.dtype))
    return MergedAdapter(path=str(folder), digest=lora.digest, layers=len(targets))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / _CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"LoRA adapter {folder} holds no {_CONFIG}: not a PEFT adapter folder") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type is {config.get('peft_type')!r}, only LORA adapters are merged")
    unsupported = {
        "use_dora": "DoRA rescales each weight column by a learned magnitude",
        "fan_in_fan_out": "transposed (Conv1D) target layers",
        "modules_to_save": "fully trained extra modules",
        "rank_pattern": "per-module ranks",
        "alpha_pattern": "per-module alphas",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise ConfigError(f"{path}: {key} is set ({what}); this adapter cannot be merged as plain LoRA")
    if config.get("bias", "none") != "none":
        raise ConfigError(f"{path}: bias={config['bias']!r} trains biases; only bias='none' adapters merge")
    return config


def _scale(config: dict[str, Any], folder: Path) -> float:
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise ConfigError(f"{folder / _CONFIG}: r={rank!r} and lora_alpha={alpha!r} must be numbers, r >= 1")
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _pairs(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer name: (A, B)}``; ConfigError for tensors that are not a linear layer's A or B."""
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.endswith(".lora_A.weight"):
            downs[key.removesuffix(".lora_A.weight")] = tensor
        elif key.endswith(".lora_B.weight"):
            ups[key.removesuffix(".lora_B.weight")] = tensor
        else:
            raise ConfigError(f"LoRA adapter {folder}: tensor {key!r} is not a linear layer's lora_A/lora_B")
    if downs.keys() != ups.keys():
        unpaired = sorted(downs.keys() ^ ups.keys())
        raise ConfigError(f"LoRA adapter {folder}: {unpaired[0]!r} has lora_A or lora_B but not both")
    if not downs:
        raise ConfigError(f"LoRA adapter {folder}: {_WEIGHTS} holds no LoRA weights")
    return {name: (downs[name], ups[name]) for name in downs}


def _target(name: str, modules: dict[str, torch.nn.Module], folder: Path) -> torch.nn.Linear:
    import torch

    path = name.removeprefix(_PEFT_PREFIX)
    for candidate in (path, path.removeprefix(_HEAD_PREFIX)):
        layer = modules.get(candidate)
        if isinstance(layer, torch.nn.Linear):
            return layer
        if layer is not None:
            raise ConfigError(
                f"LoRA adapter {folder}: {candidate} is a {type(layer).__name__}, not a linear layer"
            )
    raise ConfigError(
        f"LoRA adapter {folder}: the model has no layer {path!r}: trained on another base model?"
    )


def _digest(folder: Path) -> str:
    """First 12 hex digits of the sha256 over the config and the weights: the adapter's identity."""
    digest = hashlib.sha256()
    for name in (_CONFIG, _WEIGHTS):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]
