"""Settings of the reranker stage: which model scores (query, document) pairs, and its actor pool.

A plain frozen pydantic model like :mod:`workers.settings`; :mod:`pipeline.settings` nests it as the
optional ``reranker`` section (absent: no reranker).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.settings import BatchSettings, DType

RerankerKind = Literal["auto", "qwen3", "cross-encoder"]

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
"""Qwen3-Reranker's default instruction (its model card's ``format_instruction``)."""


class RerankerSettings(BaseModel):
    """The reranker model, how pairs are batched on it, and the Ray actors that hold it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name_or_path: str = Field(
        description="Hugging Face hub id or local folder of the reranker (e.g. Qwen/Qwen3-Reranker-0.6B, "
        "or a sentence-transformers CrossEncoder folder). Nothing is downloaded unless the hub is "
        "reachable; a local folder always works.",
    )
    kind: RerankerKind = Field(
        "auto",
        description="'qwen3': a causal LM scoring P(yes) over {yes, no} at the last position of Qwen3-"
        "Reranker's prompt; 'cross-encoder': a sequence-classification head with one logit, sigmoid "
        "(sentence-transformers CrossEncoder); 'auto' reads the folder's architectures.",
    )
    instruction: str = Field(
        DEFAULT_INSTRUCTION,
        description="Qwen3 rerankers: the <Instruct> of requests without their own. Cross-encoders: ignored.",
    )
    max_length: int | None = Field(
        None,
        ge=16,
        description="Longest pair in tokens, prompt and special tokens included; default: the model's own "
        "limit capped at 8192. A longer pair is refused (InputTooLong, HTTP 400), never truncated.",
    )
    truncate_documents: bool = Field(
        False,
        description="Cut the end of a document whose pair is over max_length so that it fits, as TEI's "
        "truncate flag and Qwen3-Reranker's own code do (the query and prompt are never cut). Default: "
        "such a pair is refused (InputTooLong, HTTP 400 context_length_exceeded).",
    )
    dtype: DType = Field("auto", description="Compute dtype. 'auto' = bfloat16 on GPU, float32 on CPU.")
    packing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Packed (unpadded) forward passes for Qwen3 rerankers, as model.packing says; "
        "cross-encoders always run padded (on the right).",
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model folder.")
    batching: BatchSettings = Field(
        default_factory=lambda: BatchSettings(
            max_batch_tokens=16384, max_wait_ms=2.0, priority_share=1.0, max_priority_tokens=262144
        ),
        description="Token-budget micro-batching in each reranker actor (every pair is a 'query': it "
        "waits in the query lane; max_priority_tokens bounds the queue).",
    )
    num_actors: int = Field(1, ge=1, description="Reranker actors to start.")
    gpus_per_actor: float = Field(
        1.0, gt=0, le=8, description="GPUs each actor asks Ray for when the cluster has GPUs."
    )
    cpus_per_actor: float = Field(
        1.0, gt=0, description="CPUs each actor asks Ray for when the cluster has no GPU."
    )
    max_restarts: int = Field(-1, ge=-1, description="How often Ray restarts a dead actor (-1 = forever).")
    max_attempts: int = Field(
        3, ge=1, description="Tries of one score call across actor deaths before it fails (503)."
    )
    ready_timeout_s: float = Field(600.0, gt=0, description="How long to wait for the actors to load.")
    call_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest wait for one score call on one actor; then it counts as a failed try.",
    )
    backpressure_s: float = Field(
        5.0,
        ge=0,
        description="How long a score call waits in all for room in full actor queues before Backpressure "
        "reaches its caller (the API answers 429 with Retry-After).",
    )
    max_documents: int = Field(
        1000, ge=1, description="Most documents in one rerank request (HTTP 400 beyond)."
    )
