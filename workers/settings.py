"""Settings of the Ray side: the model, the micro-batcher and the actor pool.

These are plain frozen pydantic models; :mod:`pipeline.settings` nests them into the
process-wide settings that read the environment and TOML files.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Pooling = Literal["auto", "last_token", "mean", "cls"]
DType = Literal["auto", "bfloat16", "float32", "fp8"]
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""What a LoRA adapter may be named: it appears in API model ids (``base:name``) and collection properties."""


class ModelSettings(BaseModel):
    """Which embedding model every actor loads, and how its outputs are pooled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name_or_path: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Hugging Face hub id or local folder of the model (AutoModel + AutoTokenizer). "
        "Nothing is downloaded unless the hub is reachable; a local folder always works.",
    )
    pooling: Pooling = Field(
        "auto",
        description="How token states become one vector. 'auto' reads the sentence-transformers "
        "pooling config in the model folder, uses last-token for Qwen3 models, else mean.",
    )
    max_length: int | None = Field(
        None,
        ge=8,
        description="Longest input in tokens (special tokens included); default: the model's own limit "
        "capped at 8192.",
    )
    dtype: DType = Field(
        "auto",
        description="Compute dtype. 'auto' = bfloat16 on GPU, float32 on CPU. float16 is not offered: "
        "Qwen3-Embedding-8B overflows to NaN in fp16. 'fp8': the transformer blocks' linear layers in "
        "float8 e4m3 (weights scaled per output channel, activations per token, torch._scaled_mm), the "
        "rest in bfloat16; needs a GPU with FP8 tensor cores (CUDA compute capability >= 8.9, e.g. "
        "H100/H200/L4) and is refused elsewhere. Vectors stay close to bf16's, not equal.",
    )
    fp8_bf16_blocks: int = Field(
        0,
        ge=0,
        description="With dtype 'fp8': how many leading transformer blocks keep their bfloat16 linears. "
        "Rounding errors of the first blocks grow the most on their way through the rest, so keeping "
        "a few in bf16 buys accuracy for a little speed.",
    )
    instruction_template: str = Field(
        "Instruct: {instruction}\nQuery:{text}",
        description="How an instruction is joined to a text (Qwen3-Embedding format by default). "
        "Applied only to inputs that carry an instruction.",
    )
    lora_path: str | None = Field(
        None,
        description="Folder of a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) "
        "merged into the weights at load: no cost per token. DoRA, trained biases and extra trained "
        "modules are refused. The adapter's digest is part of the model's identity.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Unmerged LoRA adapters every actor loads beside the base model, name -> PEFT adapter "
        'folder (JSON object in env), e.g. {"legal": "/adapters/legal"}. The base weights load once; each '
        "batch runs with one adapter (texts are grouped by adapter), at the cost of the adapter's rank per "
        "targeted layer. Names: letters, digits, '_' and '-'. An adapter that does not fit the model is "
        "refused at load.",
    )
    adapter: str | None = Field(
        None,
        description="The adapter of model.adapters this pipeline embeds its documents with (recorded with "
        "its collections, whose queries are then embedded with it too). Unset: ingestion uses the base "
        "model, and a search follows what its collections record. Not part of what actors load: workers "
        "of several collection prefixes with different adapters share one namespace's actors.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model folder.")
    compile: bool = Field(
        False,
        description="torch.compile the model (dynamic shapes) on CUDA, fusing its element-wise work; the "
        "first batches then take minutes to compile. Ignored on CPU.",
    )
    fuse_projections: bool = Field(
        True,
        description="Qwen3 models: run each block's q/k/v projections as one linear layer and its MLP's "
        "gate/up projections as another (one GEMM where there were three and two; the same weights, "
        "outputs equal up to the GEMM's summation order). Not applied with model.adapters (unmerged "
        "adapters target the separate projections); other models run as loaded.",
    )
    packing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Packed (unpadded) forward passes: texts back to back in one row, attention kept "
        "inside each text. 'auto' packs on CUDA when torch has variable-length flash attention; 'on' "
        "packs on any device (one attention call per text off CUDA); models without a packed path "
        "(see workers.model.packing) always run padded.",
    )

    @model_validator(mode="after")
    def _adapter_is_loaded(self) -> ModelSettings:
        for name in self.adapters:
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"adapter name {name!r}: use letters, digits, '_' and '-' (at most 64)")
        if self.adapter is not None and self.adapter not in self.adapters:
            raise ValueError(
                f"model.adapter {self.adapter!r} is not one of model.adapters {sorted(self.adapters)}"
            )
        return self

    def loaded(self) -> ModelSettings:
        """What the actors load: these settings without :attr:`adapter` (a choice of each request)."""
        return self.model_copy(update={"adapter": None})


class BatchSettings(BaseModel):
    """Micro-batching inside each embedder actor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_tokens: int = Field(
        16384, ge=64, description="Token budget of one forward pass (padded tokens on the padded path)."
    )
    max_wait_ms: float = Field(
        5.0, ge=0, description="How long the first waiting text may wait for a batch to fill up."
    )
    max_queued_tokens: int = Field(
        262144,
        ge=64,
        description="Tokens an actor accepts before it refuses new work with Backpressure.",
    )
    max_pending_requests: int = Field(
        32,
        ge=0,
        description="Ingestion requests an actor holds before they enter its queue: being tokenized, or "
        "tokenized and waiting for room while the queue is full (each time a forward pass takes a batch, "
        "the waiters that fit enter it, earliest first). One more is refused with Backpressure at once, "
        "before it is tokenized. A refused request is sent and tokenized again when its caller retries, "
        "so holding it saves that work. 0: hold none; a request that does not fit the queue once "
        "tokenized is refused.",
    )
    sort_window: int = Field(
        256, ge=1, description="How many waiting texts are sorted by length to cut padding."
    )
    priority_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of each batch's token budget that waiting queries (search, API) take first; "
        "ingestion gets the rest, and queries fill whatever ingestion leaves.",
    )
    max_priority_tokens: int = Field(
        32768,
        ge=64,
        description="Tokens of queries an actor accepts before it refuses more with Backpressure.",
    )
    tokenize_threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads each actor tokenizes requests on, beside its forward passes. The Rust "
        "tokenizer releases the GIL, so they run in parallel: with a small model on a fast GPU one "
        "thread cannot tokenize as fast as the GPU embeds (bench --real-text reports the GPU-busy share).",
    )
    batches_in_flight: int = Field(
        2,
        ge=1,
        le=4,
        description="Forward passes queued on the device at once. With 2, the next batch is packed, "
        "copied and queued while the current one runs and its vectors come back, so the GPU does not "
        "wait for the host between passes (+7.8% tokens/s on the 0.6B shapes, +1.7% on the 4B, one "
        "H100); 1 runs them strictly one after another. Memory is not doubled: a pass's activations "
        "are freed once it is queued.",
    )


class PoolSettings(BaseModel):
    """The Ray actor pool that holds the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_actors: int | None = Field(
        None, ge=1, description="Embedder actors to start; default one per GPU in the cluster, at least one."
    )
    gpus_per_actor: float = Field(
        1.0,
        gt=0,
        le=8,
        description="GPUs each actor asks Ray for when the cluster has GPUs (fractions allowed).",
    )
    cpus_per_actor: float = Field(
        2.0,
        gt=0,
        description="CPUs each actor asks Ray for when the cluster has no GPU; Ray gives the actor "
        "that many torch threads (OMP_NUM_THREADS).",
    )
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each embedder actor asks for besides its GPUs/CPUs (JSON object in "
        'env), e.g. {"embedder_slot": 1} to place actors only on nodes started with that resource.',
    )
    max_restarts: int = Field(-1, ge=-1, description="How often Ray restarts a dead actor (-1 = forever).")
    detached: bool = Field(
        True,
        description="Embedder actors outlive the worker that started them (Ray detached actors): a "
        "restarted or second worker, `serve` and `search` in the same ray.namespace find and share them "
        "instead of loading the model again, and a crashed worker does not take them down. They stop "
        "with `python -m pipeline stop-embedders` (or the Ray cluster). False: they die with their worker.",
    )
    follow_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often `serve` looks for embedder actors that appeared (autoscaling, a new "
        "worker) or went, in its ray.namespace.",
    )
    max_attempts: int = Field(
        4, ge=1, description="Tries of one embed request across actor deaths before it fails."
    )
    ready_timeout_s: float = Field(
        600.0, gt=0, description="How long to wait for every actor to load its model."
    )
    call_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest wait for one embed call on one actor (e.g. one stuck restarting); then it "
        "counts as a failed try.",
    )
    query_backpressure_s: float = Field(
        5.0,
        ge=0,
        description="How long a search query waits in all, across retries, for room in full actor queues "
        "before Backpressure reaches its caller (the API answers 429 with Retry-After). Ingestion texts "
        "wait as long as it takes: for them a full queue is flow control.",
    )
    poison_after_crashes: int = Field(
        2,
        ge=1,
        description="After this many failed tries of one request, its texts are run alone on an actor; a "
        "request that then crashes the actor this many times is split in halves until the texts that "
        "kill actors are isolated (raised as PoisonTexts).",
    )
