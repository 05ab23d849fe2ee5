"""What a loaded model is, as an actor reports it: picklable and torch-free, cheap for the driver."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, as reported by an actor (picklable, torch-free)."""

    name: str
    native_dim: int
    max_length: int
    device: str
    dtype: str
    pooling: str
    model_type: str = ""
    """The Transformers ``config.model_type`` ("qwen3", "bert", ...): says how queries are formatted."""
    adapter: str | None = None
    """The LoRA adapter merged into the weights (``path@digest``), if any."""
    adapters: dict[str, str] = field(default_factory=dict, hash=False)
    """The unmerged LoRA adapters a request may name: name -> ``path@digest`` (see workers.model.adapters)."""
