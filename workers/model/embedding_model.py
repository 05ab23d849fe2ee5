"""The embedding model behind a narrow interface: token ids in, Matryoshka embeddings out.

Batching and actors only see :class:`EmbeddingModel`; transformers internals stay here.
Importing this module imports neither torch nor transformers (they load with the model), so
the driver can unpickle the :class:`ModelInfo` an actor sends back without them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workers.batch_budget import forward_cost
from workers.errors import ForwardOutOfMemory, UnknownAdapter
from workers.model.info import ModelInfo
from workers.model.inputs import ModelInput
from workers.model.loading import compute_dtype, load_weights, pick_device, use_packing
from workers.model.lora import merge_lora
from workers.model.pooling_choice import resolve_pooling
from workers.model.tokenizer import TextTokenizer, load_text_tokenizer, resolve_model_files
from workers.settings import ModelSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from workers.model.adapters import Adapters
    from workers.model.device_results import DeviceResults
    from workers.model.pooling import PoolingMode

__all__ = ["EmbeddingModel", "ModelInfo", "compute_dtype", "resolve_pooling"]


class EmbeddingModel:
    """A loaded Transformers encoder with its tokenizer and pooling.

    :meth:`encode_ids` (tokenizer only) and :meth:`embed_ids` (model only) share no state, so one
    thread may tokenize while another runs forward passes; neither method is safe to call from
    two threads at once.

    When :attr:`packed`, a batch runs as one unpadded row (see :mod:`workers.model.packing`) and costs
    the sum of its lengths.  Otherwise inputs are padded on the left for last-token pooling (every
    row's last real token then sits in the last column, the layout Qwen3-Embedding and
    sentence-transformers use) and on the right otherwise (the layout absolute-position encoders
    such as BERT expect), and a batch costs its longest input times its size.  Both give every
    text the embedding it gets alone, within floating-point tolerance.
    """

    def __init__(
        self,
        *,
        name: str,
        model: PreTrainedModel,
        tokenizer: TextTokenizer,
        pooling: PoolingMode,
        device: str,
        dtype: str,
        packing: Literal["auto", "on", "off"] = "off",
        compile: bool = False,
        adapter: str | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        """``adapter``: the label of a LoRA adapter merged into ``model``; ``adapters``: the unmerged
        ones installed on it (:func:`workers.model.adapters.install_adapters`)."""
        self._name = name
        self._adapter = adapter
        self._adapters = adapters
        self._model = model
        self._tokenizer = tokenizer
        self._pooling: PoolingMode = pooling
        self._device = device
        self._dtype = dtype
        self._native_dim = int(model.config.hidden_size)
        self._model_type = str(getattr(model.config, "model_type", ""))
        self._padding_side: Literal["left", "right"] = "left" if pooling == "last_token" else "right"
        parameters = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in parameters
        # A decoder would otherwise fill a key/value cache nobody reads.
        self._cache_off = {"use_cache": False} if "use_cache" in parameters else {}
        self._packed = use_packing(model, device, packing)
        # What runs the batches: the model itself, or its compiled form (which calls the same weights).
        self._forward: Callable[..., Any] = model
        if compile and device.startswith("cuda"):
            import torch

            self._forward = torch.compile(model, dynamic=True)

    @classmethod
    def load(cls, settings: ModelSettings, device: str | None = None) -> EmbeddingModel:
        """Load tokenizer and weights of ``settings.name_or_path`` onto ``device`` in eval mode.

        ``device`` defaults to "cuda" when a GPU is visible, else "cpu".  Raises ConfigError when
        the model cannot be loaded or its pooling cannot be reproduced.
        """
        from transformers import AutoModel

        files = resolve_model_files(settings.name_or_path)
        tokenizer = load_text_tokenizer(settings, files)
        device = pick_device(device)
        dtype = compute_dtype(settings.dtype, device)
        what = f"model {settings.name_or_path!r}"
        model = load_weights(AutoModel, files.path, dtype, settings.trust_remote_code, what)
        adapter = merge_lora(model, Path(settings.lora_path)).label() if settings.lora_path else None
        model.to(device).eval()
        if settings.fuse_projections and not settings.adapters:
            from workers.model.fused import fuse_projections

            fuse_projections(model)  # before FP8, which then quantizes the fused layers
        if settings.dtype == "fp8":
            from workers.model.fp8 import use_fp8_linears

            use_fp8_linears(model, bf16_blocks=settings.fp8_bf16_blocks)
        adapters = None
        if settings.adapters:
            from workers.model.adapters import install_adapters

            adapters = install_adapters(model, settings.adapters)
        pooling = resolve_pooling(settings.pooling, files, model.config.model_type)
        return cls(
            name=settings.name_or_path,
            model=model,
            tokenizer=tokenizer,
            pooling=pooling,
            device=device,
            dtype="fp8" if settings.dtype == "fp8" else dtype,
            packing=settings.packing,
            compile=settings.compile,
            adapter=adapter,
            adapters=adapters,
        )

    @property
    def name(self) -> str:
        """The configured model name or path."""
        return self._name

    @property
    def native_dim(self) -> int:
        """Width of the full embedding (the model's hidden size)."""
        return self._native_dim

    @property
    def max_length(self) -> int:
        """Longest input in tokens, special tokens included."""
        return self._tokenizer.max_length

    @property
    def device(self) -> str:
        """Device the weights and the forward pass live on."""
        return self._device

    @property
    def dtype(self) -> str:
        """Compute dtype: "bfloat16", "float32", or "fp8" (e4m3 linears, bfloat16 around them)."""
        return self._dtype

    @property
    def pooling(self) -> PoolingMode:
        """Pooling in use ("last_token", "mean" or "cls")."""
        return self._pooling

    @property
    def padding_side(self) -> Literal["left", "right"]:
        """Where padding goes in a batch."""
        return self._padding_side

    @property
    def packed(self) -> bool:
        """Whether batches run packed (unpadded) rather than padded."""
        return self._packed

    @property
    def module(self) -> PreTrainedModel:
        """The underlying Transformers model (for benchmarks and reference forwards)."""
        return self._model

    @property
    def tokenizer(self) -> TextTokenizer:
        """The model's tokenizer (CPU)."""
        return self._tokenizer

    def info(self) -> ModelInfo:
        """A picklable description of this model."""
        return ModelInfo(
            name=self._name,
            native_dim=self._native_dim,
            max_length=self.max_length,
            device=self._device,
            dtype=self._dtype,
            pooling=self._pooling,
            model_type=self._model_type,
            adapter=self._adapter,
            adapters=dict(self._adapters.labels) if self._adapters else {},
        )

    def encode_ids(self, texts: Sequence[ModelInput]) -> list[list[int]]:
        """Input ids of each text on CPU, special tokens added (so a Qwen3 input ends with the EOS
        last-token pooling reads); a :class:`~workers.model.inputs.TokenizedText` keeps its ids
        (:meth:`~workers.model.tokenizer.TextTokenizer.encode` checks them).  InputTooLong for an
        input over :attr:`max_length`, never truncated."""
        return self._tokenizer.encode(texts)

    def embed(
        self, texts: Sequence[ModelInput], dims: Sequence[int], adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """Embeddings of ``texts``: see :meth:`embed_ids`."""
        return self.embed_ids(self.encode_ids(texts), dims, adapter)

    def check_adapter(self, adapter: str | None) -> None:
        """UnknownAdapter unless ``adapter`` is None (the base model) or one of the loaded adapters."""
        if adapter is not None and (self._adapters is None or adapter not in self._adapters.labels):
            loaded = sorted(self._adapters.labels) if self._adapters else []
            raise UnknownAdapter(f"no LoRA adapter {adapter!r} is loaded (model.adapters: {loaded})")

    def embed_ids(
        self, ids: Sequence[Sequence[int]], dims: Sequence[int], adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """Embeddings of ``ids``: :meth:`launch_ids`, then wait for its results."""
        return self.launch_ids(ids, dims, adapter)()

    def launch_ids(
        self, ids: Sequence[Sequence[int]], dims: Sequence[int], adapter: str | None = None
    ) -> Callable[[], dict[int, np.ndarray]]:
        """Queue one forward pass over ``ids`` (packed or padded, see :attr:`packed`) with the unmerged
        LoRA adapter ``adapter`` (None: the base model; UnknownAdapter for one that is not loaded), and
        return the function that waits for its results: each of ``dims`` mapped to a float32
        ``(len(ids), dim)`` array of unit rows in input order.

        The pooled vectors are cut to each dim and normalized on the device; their copies back are
        queued too (:class:`~workers.model.device_results.DeviceResults`), so on CUDA this returns
        while the pass still runs, and the next pass can be queued behind it.  The waiting function may
        be called from another thread.  Raises ValueError for an empty input row, a row longer than
        :attr:`max_length`, or a dim outside ``1..native_dim``; :class:`~workers.errors.ForwardOutOfMemory`
        when the device runs out of memory, after the pass's tensors are dropped and (on CUDA) the
        allocator's cache is freed: the same inputs may fit in smaller batches.  Any other error of
        the model propagates as it is, from here or from the waiting function.
        """
        import torch

        for row in ids:
            if not 0 < len(row) <= self.max_length:
                raise ValueError(f"an input has {len(row)} tokens; 1..{self.max_length} are allowed")
        self.check_adapter(adapter)
        try:
            if self._adapters is None:
                return self._launch_pass(ids, dims).wait
            with self._adapters.using(adapter):
                return self._launch_pass(ids, dims).wait
        except torch.OutOfMemoryError as exc:
            # The traceback's frames hold the pass's activations: drop them, so the cache can be freed.
            cause = exc.with_traceback(None)
        cost = forward_cost(ids, self._packed)
        self.release_memory()
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ForwardOutOfMemory(
            f"out of memory in a forward pass over {len(ids)} input(s) ({cost} tokens): {detail}", cost
        ) from cause

    def release_memory(self) -> None:
        """Give the accelerator memory cached by torch's allocator back (CUDA only; else nothing)."""
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _launch_pass(self, ids: Sequence[Sequence[int]], dims: Sequence[int]) -> DeviceResults:
        import torch

        from workers.model.device_results import DeviceResults
        from workers.model.matryoshka import cut_and_normalize
        from workers.model.pooling import pool

        with torch.inference_mode():
            if ids and self._packed:
                pooled = self._embed_packed(ids)
            elif ids:
                input_ids, mask = self._pad(ids)
                inputs = {"input_ids": input_ids, "attention_mask": mask, **self._cache_off}
                if self._padding_side == "left" and self._takes_position_ids:
                    # Number positions from each row's first real token, as if unpadded, so a
                    # text's embedding does not depend on the batch it travels in.
                    inputs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
                pooled = pool(self._forward(**inputs).last_hidden_state, mask, self._pooling)
            else:
                pooled = torch.empty((0, self._native_dim), device=self._device)
            return DeviceResults(cut_and_normalize(pooled, dims))

    def _embed_packed(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        from workers.model.packing import pack, packed_forward, pool_packed

        batch = pack(ids, self._device)
        hidden = packed_forward(self._forward, self._model.config.layer_types, batch)
        return pool_packed(hidden, batch.cu_seqlens, self._pooling)

    def _pad(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of ``ids`` padded to the longest, on the device."""
        import torch

        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self._tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            columns = slice(width - len(row), width) if self._padding_side == "left" else slice(0, len(row))
            input_ids[i, columns] = torch.tensor(row, dtype=torch.long)
            mask[i, columns] = 1
        return input_ids.to(self._device), mask.to(self._device)
