"""Several LoRA adapters on one loaded model, unmerged: each forward pass runs with one of them, or none.

Each linear layer an adapter targets is wrapped once (:class:`AdaptedLinear`); the wrapper computes
``x·Wᵀ (+ bias) + scale·(x·Aᵀ)·Bᵀ`` with the A/B of the adapter that is active for this pass, or only
the base layer when none is (or when the active adapter does not target it).  The base weights are
loaded once and never changed, so switching adapters costs nothing; each adapter costs its rank's worth
of extra matmuls per targeted layer, on the passes that use it.

Guarantees:

* A pass run with adapter ``name`` gives the vectors of the base model with that adapter merged
  (:func:`workers.model.lora.merge_lora`), within the rounding of the compute dtype; a pass without an
  adapter gives the base model's vectors.
* Every adapter is checked against the model at load (:func:`workers.model.lora.lora_targets`):
  ConfigError for a layer name or an A/B shape that does not fit, before anything is served.
* Which adapter is active is one attribute read by every wrapper: torch.compile guards on it, so a
  compiled model is compiled once per adapter in use (within dynamo's recompile limit, 8 by default;
  past it, passes of further adapters run eagerly, still correct).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch.nn import functional

from workers.errors import ConfigError
from workers.model.lora import lora_targets, read_lora
from workers.settings import ADAPTER_NAME


class AdapterSwitch:
    """Which adapter the next forward passes run with (None: the base model); shared by every wrapper."""

    def __init__(self) -> None:
        self.active: str | None = None


class AdaptedLinear(torch.nn.Module):
    """A linear layer plus the LoRA pairs of the adapters that target it; see the module docstring."""

    def __init__(self, base: torch.nn.Linear, switch: AdapterSwitch) -> None:
        super().__init__()
        self.base = base
        self.switch = switch
        # Plain tensors, not buffers: the state dict stays the base model's.
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        active = self.switch.active
        pair = self.pairs.get(active) if active is not None else None
        if pair is None:
            return out
        down, up, scale = pair
        return out + functional.linear(functional.linear(x, down), up) * scale


class Adapters:
    """The unmerged adapters installed on a model, by name; :meth:`using` selects one for a pass."""

    def __init__(self, switch: AdapterSwitch, labels: dict[str, str]) -> None:
        self._switch = switch
        self.labels = labels
        """Each adapter's ``path@digest``, by name."""

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Run the passes inside with adapter ``name`` (None: the base model); KeyError for another name."""
        if name is not None and name not in self.labels:
            raise KeyError(f"no adapter {name!r}; this model has {sorted(self.labels)}")
        self._switch.active = name
        try:
            yield
        finally:
            self._switch.active = None


def install_adapters(model: torch.nn.Module, folders: Mapping[str, str]) -> Adapters:
    """Wrap the linear layers ``folders``' adapters target, on ``model`` (already on its device, in its
    compute dtype), and give each wrapper its adapters' A/B there; ConfigError for a bad name or folder,
    or an adapter that does not fit the model.  Every adapter is checked before any layer is wrapped."""
    for name in folders:
        if not ADAPTER_NAME.fullmatch(name):
            raise ConfigError(f"adapter name {name!r}: use letters, digits, '_' and '-' (at most 64)")
    loras = {name: read_lora(Path(folder)) for name, folder in sorted(folders.items())}
    targets = {name: lora_targets(model, lora) for name, lora in loras.items()}
    switch = AdapterSwitch()
    wrapped: dict[int, AdaptedLinear] = {}  # id(base layer) -> its wrapper
    for name, lora in loras.items():
        for layer_name, layer in targets[name].items():
            down, up = lora.pairs[layer_name]
            if id(layer) not in wrapped:
                wrapped[id(layer)] = _wrap(model, layer, switch)
            device, dtype = layer.weight.device, layer.weight.dtype
            wrapped[id(layer)].pairs[name] = (down.to(device, dtype), up.to(device, dtype), lora.scale)
    return Adapters(switch, {name: lora.label() for name, lora in loras.items()})


def _wrap(model: torch.nn.Module, layer: torch.nn.Linear, switch: AdapterSwitch) -> AdaptedLinear:
    """Replace ``layer`` in ``model`` by a wrapper around it (at every place it sits); returns the wrapper."""
    replacement = AdaptedLinear(layer, switch)
    places = [
        (parent, child)
        for parent in model.modules()
        for child, module in parent.named_children()
        if module is layer
    ]
    for parent, child in places:
        setattr(parent, child, replacement)
    return replacement
