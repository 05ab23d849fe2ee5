"""Settings of the embedder backend: the in-actor model (default) or a remote OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator

from pipeline.settings.base import Section, read_secret

Backend = Literal["actors", "openai"]


class EmbedderSettings(Section):
    """Which embedder turns texts into vectors: Ray actors that hold the model (``[model]``, ``[pool]``,
    ``[batching]``), or a remote ``POST {base_url}/embeddings`` (SGLang, vLLM, TEI, or another
    `python -m pipeline serve`).  Either way the tokens are counted, the requests are cut and the
    Matryoshka replicas are cut and normalized on this side, with ``model.name_or_path``'s tokenizer."""

    _secret_files: ClassVar[tuple[tuple[str, str], ...]] = (("api_key", "api_key_file"),)
    _ordered: ClassVar[tuple[tuple[str, str, bool], ...]] = (("backoff_base_s", "backoff_max_s", False),)

    backend: Backend = Field(
        "actors",
        description="'actors': Ray actors load model.name_or_path (the default). 'openai': an "
        "OpenAI-compatible /v1/embeddings endpoint at base_url serves the same model; model.name_or_path "
        "must still be a local folder or cached hub id, for its tokenizer (token counts, chunking).",
    )
    base_url: str | None = Field(
        None,
        description="Base URL of the endpoint, up to and including /v1 (e.g. http://gpu-1:30000/v1); "
        "embeddings are POSTed to {base_url}/embeddings. Required with backend 'openai'.",
    )
    model_name: str | None = Field(
        None,
        description="The 'model' sent in every request (the id the server serves the model under); "
        "default: model.name_or_path.",
    )
    api_key: SecretStr | None = Field(
        None, description="Sent as 'Authorization: Bearer KEY' (vLLM's --api-key, SGLang's --api-key)."
    )
    api_key_file: Path | None = Field(
        None, description="File holding the API key (one trailing newline dropped); instead of api_key."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for one HTTP request's answer; past it the try failed."
    )
    concurrent_requests: int = Field(
        8, ge=1, le=1024, description="Most requests in flight to the endpoint at once (from this process)."
    )
    max_waiting_requests: int = Field(
        64,
        ge=1,
        description="Requests that may wait for a free slot; past that, embedding raises Backpressure "
        "with retry_after (ingestion retries it; the API answers 429 with Retry-After).",
    )
    max_request_inputs: int = Field(
        128, ge=1, le=2048, description="Most texts in one request (servers limit it; OpenAI: 2048)."
    )
    max_request_tokens: int = Field(
        16384,
        ge=8,
        description="Most tokens (special tokens included, counted with the model's tokenizer) in one "
        "request; a text longer than this alone goes alone, one longer than the model takes is refused.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        description="Tries of one request on timeouts, dropped connections, 429, 5xx or a malformed "
        "answer before EmbedderUnavailable (retriable: ingestion tries again later, nothing is lost).",
    )
    backoff_base_s: float = Field(0.25, gt=0, description="First wait before a retry; doubles per try.")
    backoff_max_s: float = Field(
        30.0, gt=0, description="Longest wait before a retry, also for a longer Retry-After."
    )
    start_timeout_s: float = Field(
        60.0,
        gt=0,
        description="At start, how long to keep asking the endpoint for one tiny embedding before giving "
        "up with an error naming it (a server starting beside the worker is waited for).",
    )

    @model_validator(mode="after")
    def _endpoint_given(self) -> Self:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        return self

    def bearer(self) -> str | None:
        """The API key to send, read from ``api_key`` or ``api_key_file`` (None: no header)."""
        return read_secret(self.api_key, self.api_key_file, "embedder.api_key")
