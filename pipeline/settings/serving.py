"""Settings of the read side: search, routing and the HTTP API."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from pipeline.settings.base import Section


class SearchSettings(Section):
    """The read side: query tasks, funnel search and routing."""

    default_task: str | None = Field(
        "Given a web search query, retrieve relevant passages that answer the query",
        description="Task of queries without one, for instruction-aware models (Qwen3-Embedding gets "
        "'Instruct: {task}\\nQuery:{q}'); other models get the raw query.",
    )
    collection_tasks: dict[str, str] = Field(
        default_factory=dict,
        description="Default task per collection prefix (overrides default_task for that collection).",
    )
    funnel_factor: int = Field(
        50,
        ge=1,
        le=1000,
        description="Funnel search shortlists top_k × this many chunks on the small replica; a search "
        "that would ask Milvus for more than 16,384 hits per query is refused.",
    )
    profile_path: Path | None = Field(
        None,
        description="eval-recall's JSON (measured recall/latency per strategy, `python -m pipeline "
        "eval-recall --out DIR` writes DIR/recall.json) that routing reads; unset: nothing was measured, "
        "so a recall target or latency budget is answered by the native replica (exact), saying why.",
    )

    def task_for(self, collection_prefix: str) -> str | None:
        """The default query task of the collections named ``{collection_prefix}_{dim}``."""
        return self.collection_tasks.get(collection_prefix, self.default_task)


class ApiSettings(Section):
    """The HTTP API of `python -m pipeline serve` (OpenAI-compatible embeddings, search)."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API listens on (0: any free port).")
    model_name: str | None = Field(
        None, description="Model id the API reports and accepts in 'model'; default: model.name_or_path."
    )
    max_inputs: int = Field(2048, ge=1, description="Most inputs in one embeddings request (OpenAI's limit).")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted (larger: HTTP 413)."
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a request may take; past it the API answers 503 with Retry-After and "
        "cancels the request's work on the embedder actors.",
    )
    keys: tuple[SecretStr, ...] = Field(
        (),
        description="API keys (never logged): each entry is 'KEY' or 'KEY TENANT' (that key may then only "
        "ask for that tenant). With any key set, every /v1 route needs 'Authorization: Bearer KEY' (401 "
        "without a valid one); /health stays open. Checked when serve starts.",
    )
    keys_file: Path | None = Field(
        None,
        description="File of more API keys, one entry per line as in 'keys' ('KEY' or 'KEY TENANT'); blank "
        "lines and lines starting with '#' are skipped. Read by serve when it starts.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve without API keys on an address other than loopback (serve refuses it "
        "otherwise, since /v1/search returns document text); a warning is logged.",
    )
