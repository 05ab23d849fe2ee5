"""What loading the embedding model and the reranker do alike: the device, the compute dtype, the
fast tokenizer and its config, the weights, packed attention.

Both :meth:`workers.model.embedding_model.EmbeddingModel.load` and
:meth:`workers.model.reranker_model.RerankerModel.load` read a model through these, so the two pick
devices and dtypes, refuse slow tokenizers and switch to packed attention by the same rules.
Importing this module imports neither torch nor transformers (each function imports what it needs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

from workers.errors import ConfigError
from workers.settings import DType

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast


def pick_device(requested: str | None) -> str:
    """``requested``, else "cuda" when a GPU is visible, else "cpu"."""
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(requested: DType, device: str) -> Literal["bfloat16", "float32"]:
    """The dtype to load and run in: 'auto' is bfloat16 on a GPU and float32 elsewhere (never float16);
    'fp8' is bfloat16 around FP8 linears, and a ConfigError on a device without FP8 tensor cores."""
    if requested == "fp8":
        from workers.model.fp8 import require_fp8

        require_fp8(device)
        return "bfloat16"
    if requested != "auto":
        return requested
    return "bfloat16" if device.startswith("cuda") else "float32"


def load_fast_tokenizer(
    path: str, trust_remote_code: bool, what: str
) -> tuple[PreTrainedTokenizerFast, PretrainedConfig]:
    """The Transformers tokenizer and config of ``path``.  ConfigError naming ``what`` (e.g. "model
    'x'") when either cannot be loaded, or when the tokenizer is not a fast (Rust) one: token offsets
    and the own backend copies (:func:`workers.model.tokenizer.unbounded_copy`) need it."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {what}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{what} has no fast (Rust) tokenizer; one is needed for token offsets")
    return cast("PreTrainedTokenizerFast", tokenizer), config


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills padded positions: the tokenizer's PAD, else its EOS, else 0 (masked out)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else 0


def load_weights(loader: Any, path: str, dtype: str, trust_remote_code: bool, what: str) -> Any:
    """``loader.from_pretrained(path)`` (an ``AutoModel*`` class) in the torch dtype named ``dtype``,
    on the CPU; ConfigError naming ``what`` when it cannot be loaded."""
    import torch

    try:
        return loader.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {what}: {exc}") from exc


def use_packing(model: PreTrainedModel, device: str, packing: Literal["auto", "on", "off"]) -> bool:
    """Switch ``model`` to packed attention when ``packing`` asks for it and the model can ('auto':
    only where the varlen kernel runs on ``device``); says whether it did ('off': never)."""
    if packing == "off":
        return False
    from workers.model.packing import can_pack, use_packed_attention, varlen_kernel_available

    if not can_pack(model) or (packing == "auto" and not varlen_kernel_available(device)):
        return False
    use_packed_attention(model)
    return True
