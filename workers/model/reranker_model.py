"""The reranker behind a narrow interface: (query, document) pairs in, relevance scores in [0, 1] out.

Two kinds of model, one interface (:class:`RerankerModel`):

* **qwen3** — a causal LM read as Qwen3-Reranker is: each pair becomes its published prompt (see
  :mod:`workers.model.reranker_inputs`), and the score is
  ``softmax([logit("no"), logit("yes")])[1]`` at the last position.  Only the two LM-head rows of
  "no" and "yes" are applied, to the last position only: the same logits as the full head, without
  a vocabulary-wide matrix product over every token.
* **cross-encoder** — a sequence-classification head with one logit (sentence-transformers'
  CrossEncoder layout); the score is its sigmoid, as CrossEncoder.predict gives it.

A pair over :attr:`RerankerModel.max_length` tokens is refused with
:class:`~workers.errors.InputTooLong` naming the document, unless ``truncate_documents`` says to cut
the document's end (:class:`~workers.model.reranker_inputs.PairEncoder`).  Batches are scored in
one forward pass, packed (Qwen3 where the device allows, reading each text's own last position) or
padded (left for Qwen3, right for cross-encoders); a pair's score does not depend on its batch.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workers.batch_budget import forward_cost
from workers.errors import ConfigError, ForwardOutOfMemory
from workers.model.loading import (
    compute_dtype,
    load_fast_tokenizer,
    load_weights,
    pad_token_id,
    pick_device,
    use_packing,
)
from workers.model.reranker_inputs import QWEN3_PREFIX, QWEN3_SUFFIX, PairEncoder, PairIds, qwen3_body
from workers.model.tokenizer import input_limit, unbounded_copy
from workers.reranker_settings import RerankerSettings

__all__ = ["QWEN3_PREFIX", "QWEN3_SUFFIX", "PairIds", "RerankerInfo", "RerankerModel", "qwen3_body"]

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel

Kind = Literal["qwen3", "cross-encoder"]


@dataclass(frozen=True)
class RerankerInfo:
    """What a loaded reranker is, as reported by an actor (picklable, torch-free)."""

    name: str
    kind: Kind
    max_length: int
    device: str
    dtype: str
    packed: bool


def resolve_kind(requested: str, architectures: Sequence[str]) -> Kind:
    """The kind to load: an explicit setting wins; 'auto' reads the config's architectures."""
    if requested in ("qwen3", "cross-encoder"):
        return requested  # type: ignore[return-value]
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "qwen3"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    raise ConfigError(
        f"cannot tell the reranker kind from architectures {list(architectures)}; set reranker.kind"
    )


class RerankerModel:
    """A loaded reranker with its tokenizer.  :meth:`encode_pairs` (tokenizer only) and
    :meth:`score_ids` (model only) share no state: one thread may tokenize while another scores."""

    def __init__(
        self,
        *,
        name: str,
        kind: Kind,
        model: PreTrainedModel,
        tokenizer: Tokenizer,
        max_length: int,
        pad_token_id: int,
        device: str,
        dtype: str,
        instruction: str,
        yes_no: tuple[int, int] | None = None,
        packing: Literal["auto", "on", "off"] = "off",
        truncate_documents: bool = False,
    ) -> None:
        """``yes_no``: the token ids of "yes" and "no" (qwen3 only)."""
        self._name, self._kind, self._model = name, kind, model
        self._max_length, self._pad = max_length, pad_token_id
        self._device, self._dtype = device, dtype
        self._encoder = PairEncoder(tokenizer, kind, max_length, instruction, truncate_documents)
        self._packed = False
        if kind == "qwen3":
            if yes_no is None:
                raise ConfigError("a qwen3 reranker needs the ids of 'yes' and 'no'")
            self._decoder: Any = model.get_decoder()
            # Rows of "no" and "yes" (in that order) of the LM head, in float32: their logits only.
            head = model.get_output_embeddings().weight
            self._head = head[[yes_no[1], yes_no[0]]].detach().float()
            self._packed = use_packing(self._decoder, device, packing)
        parameters = inspect.signature((self._decoder if kind == "qwen3" else model).forward).parameters
        self._takes_types = kind == "cross-encoder" and "token_type_ids" in parameters
        self._types = int(getattr(model.config, "type_vocab_size", 1) or 1)

    @classmethod
    def load(cls, settings: RerankerSettings, device: str | None = None) -> RerankerModel:
        """Load tokenizer and weights of ``settings.name_or_path`` onto ``device`` (default: CUDA when
        visible) in eval mode.  ConfigError when it cannot be loaded or is not a reranker this reads."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        path = settings.name_or_path
        what = f"reranker {settings.name_or_path!r}"
        tokenizer, config = load_fast_tokenizer(path, settings.trust_remote_code, what)
        kind = resolve_kind(settings.kind, getattr(config, "architectures", None) or [])
        device = pick_device(device)
        dtype = compute_dtype(settings.dtype, device)
        loader = AutoModelForCausalLM if kind == "qwen3" else AutoModelForSequenceClassification
        model = load_weights(loader, path, dtype, settings.trust_remote_code, what)
        if kind == "cross-encoder" and model.config.num_labels != 1:
            raise ConfigError(
                f"cross-encoder {settings.name_or_path!r} has {model.config.num_labels} labels; 1 is read"
            )
        model.to(device).eval()
        yes_no = None
        if kind == "qwen3":
            ids: list[Any] = [tokenizer.convert_tokens_to_ids(token) for token in ("yes", "no")]
            if any(i is None or i == tokenizer.unk_token_id for i in ids):
                raise ConfigError(f"reranker {settings.name_or_path!r}: 'yes' / 'no' are not single tokens")
            yes_no = (int(ids[0]), int(ids[1]))
        max_length = input_limit(
            settings.max_length,
            tokenizer.model_max_length,
            getattr(config, "max_position_embeddings", None),
            None,
            setting="reranker.max_length",
        )
        return cls(
            name=settings.name_or_path,
            kind=kind,
            model=model,
            tokenizer=unbounded_copy(tokenizer.backend_tokenizer),
            max_length=int(max_length),
            pad_token_id=pad_token_id(tokenizer),
            device=device,
            dtype=dtype,
            instruction=settings.instruction,
            yes_no=yes_no,
            packing=settings.packing,
            truncate_documents=settings.truncate_documents,
        )

    @property
    def max_length(self) -> int:
        """Longest pair in tokens, prompt and special tokens included."""
        return self._max_length

    @property
    def packed(self) -> bool:
        """Whether batches run packed (unpadded)."""
        return self._packed

    @property
    def module(self) -> PreTrainedModel:
        """The underlying Transformers model (for benchmarks and reference forwards)."""
        return self._model

    def info(self) -> RerankerInfo:
        """A picklable description of this reranker."""
        return RerankerInfo(self._name, self._kind, self._max_length, self._device, self._dtype, self._packed)

    def encode_pairs(
        self, query: str, documents: Sequence[str], instruction: str | None = None
    ) -> list[PairIds]:
        """Model input ids of ``(query, document)`` for each document: :meth:`PairEncoder.encode`."""
        return self._encoder.encode(query, documents, instruction)

    def score(self, query: str, documents: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Float32 ``(len(documents),)`` scores in [0, 1]: see :meth:`encode_pairs`, :meth:`score_ids`."""
        return self.score_ids(self.encode_pairs(query, documents, instruction))

    def score_ids(self, pairs: Sequence[Sequence[int]]) -> np.ndarray:
        """Float32 ``(len(pairs),)`` scores of encoded pairs, in input order, from one forward pass.

        ValueError for an empty pair or one over :attr:`max_length`; ForwardOutOfMemory (cache freed)
        when the device runs out of memory: the same pairs may fit in smaller batches.
        """
        import torch

        for row in pairs:
            if not 0 < len(row) <= self._max_length:
                raise ValueError(f"a pair has {len(row)} tokens; 1..{self._max_length} are allowed")
        if not pairs:
            return np.empty((0,), dtype=np.float32)
        try:
            with torch.inference_mode():
                scores = self._forward(pairs)
            return scores.float().cpu().numpy()
        except torch.OutOfMemoryError as exc:
            cause = exc.with_traceback(None)
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
        cost = forward_cost(pairs, self._packed)
        raise ForwardOutOfMemory(
            f"out of memory scoring {len(pairs)} pair(s) ({cost} tokens)", cost
        ) from cause

    def run_batch(
        self, pairs: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """:data:`workers.batcher.RunBatch` of the scores: ``{1: float32 (len(pairs), 1)}``.  A
        reranker has no LoRA adapters: ``adapter`` is always None (the batcher passes the batch's)."""
        if adapter is not None:
            raise ConfigError(f"the reranker has no LoRA adapters (asked for {adapter!r})")
        return {1: self.score_ids(pairs)[:, None]}

    def _forward(self, pairs: Sequence[Sequence[int]]) -> torch.Tensor:
        import torch

        if self._kind == "cross-encoder":
            inputs = self._padded(pairs, "right")
            return torch.sigmoid(self._model(**inputs).logits[:, 0].float())
        if self._packed:
            from workers.model.packing import pack, packed_forward, pool_packed

            batch = pack(pairs, self._device)
            hidden = packed_forward(self._decoder, self._decoder.config.layer_types, batch)
            last = pool_packed(hidden, batch.cu_seqlens, "last_token")
        else:
            inputs = self._padded(pairs, "left")
            # Positions from each row's first real token, as if unpadded: a score independent of its batch.
            inputs["position_ids"] = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
            last = self._decoder(**inputs, use_cache=False).last_hidden_state[:, -1].float()
        logits = last @ self._head.T  # (n, 2): "no", "yes"
        return torch.softmax(logits, dim=1)[:, 1]

    def _padded(
        self, pairs: Sequence[Sequence[int]], side: Literal["left", "right"]
    ) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(row) for row in pairs)
        ids = torch.full((len(pairs), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        types = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, row in enumerate(pairs):
            start = width - len(row) if side == "left" else 0
            ids[i, start : start + len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, start : start + len(row)] = 1
            if self._types > 1 and isinstance(row, PairIds):
                types[i, row.segment_start : len(row)] = 1
        inputs = {"input_ids": ids.to(self._device), "attention_mask": mask.to(self._device)}
        if self._takes_types:
            inputs["token_type_ids"] = types.to(self._device)
        return inputs
