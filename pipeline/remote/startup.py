"""Starting the remote embedder backend: check the settings, load the tokenizer, ask the endpoint once."""

from __future__ import annotations

import asyncio
import logging
import time

from pipeline.remote.client import EmbeddingsClient, RejectedInputs
from pipeline.remote.embedder import RemoteEmbedder
from pipeline.remote.metrics import RemoteMetrics
from pipeline.remote.requests import TokenCounter
from pipeline.settings import Settings
from workers.errors import ConfigError, EmbedderUnavailable, RetriableError
from workers.model.embedding_model import ModelInfo, resolve_pooling
from workers.model.tokenizer import (
    TextTokenizer,
    load_text_tokenizer,
    model_type_and_width,
    resolve_model_files,
)

log = logging.getLogger(__name__)

PROBE_TEXT = "ping"
"""The one text embedded at start to check that the endpoint answers, and to learn the model's width."""


def check_remote_settings(settings: Settings) -> None:
    """ConfigError for what the remote backend cannot do: autoscaling (there are no actors to scale;
    the endpoint scales itself), and a LoRA adapter (the server applies its own weights)."""
    if settings.embedder.backend != "openai":
        return
    if settings.scaling.autoscale:
        raise ConfigError(
            "embedder.backend 'openai' has no actors to scale: set scaling.autoscale = false "
            "(scale the server behind embedder.base_url instead)"
        )
    if settings.model.lora_path:
        raise ConfigError(
            "embedder.backend 'openai' cannot apply model.lora_path: the server embeds with its own "
            "weights; serve the merged model there and unset model.lora_path"
        )


async def start_remote_embedder(settings: Settings, tokenizer: TextTokenizer | None = None) -> RemoteEmbedder:
    """A :class:`RemoteEmbedder` for ``settings.embedder``, once the endpoint answered one tiny request.

    The endpoint is asked every second or so for up to ``embedder.start_timeout_s`` (a server that
    starts beside the worker is waited for); then EmbedderUnavailable naming the URL and the last
    failure.  ConfigError at once when the endpoint refuses the key (401/403), does not know the
    path or the model (404) or refuses the probe text (400), or for settings the backend cannot
    serve (:func:`check_remote_settings`).
    """
    check_remote_settings(settings)
    remote, model = settings.embedder, settings.model
    if tokenizer is None:
        tokenizer = await asyncio.to_thread(load_text_tokenizer, model)
    model_type, hidden = await asyncio.to_thread(
        model_type_and_width, model.name_or_path, model.trust_remote_code
    )
    assert remote.base_url is not None  # the settings refuse backend 'openai' without one
    client = EmbeddingsClient(
        remote.base_url, remote.model_name or model.name_or_path, remote.bearer(), remote.request_timeout_s
    )
    try:
        width = await _probe(client, remote.start_timeout_s)
        if hidden is not None and width != hidden:
            raise ConfigError(
                f"the embedder endpoint {client.url} answers {width}-dimensional vectors, but "
                f"{model.name_or_path} embeds in {hidden}: it serves another model than model.name_or_path "
                "(whose tokenizer counts and chunks here)"
            )
    except BaseException:
        await client.close()
        raise
    info = ModelInfo(
        name=model.name_or_path,
        native_dim=width,
        max_length=tokenizer.max_length,
        device=f"remote {client.url}",
        dtype="remote",
        pooling=resolve_pooling(model.pooling, resolve_model_files(model.name_or_path), model_type),
        model_type=model_type,
    )
    log.info("remote embedder %s answers: %s, %d dimensions", client.url, info.name, width)
    return RemoteEmbedder(remote, model, client, tokenizer, info, RemoteMetrics(settings.ray.namespace))


def remote_embedder_for(settings: Settings, info: ModelInfo, tokenizer: TokenCounter) -> RemoteEmbedder:
    """A :class:`RemoteEmbedder` for a model the driver's :func:`start_remote_embedder` already checked
    (``info``), without asking the endpoint again: for consumer actors."""
    remote = settings.embedder
    assert remote.base_url is not None  # the settings refuse backend 'openai' without one
    client = EmbeddingsClient(
        remote.base_url,
        remote.model_name or settings.model.name_or_path,
        remote.bearer(),
        remote.request_timeout_s,
    )
    return RemoteEmbedder(
        remote, settings.model, client, tokenizer, info, RemoteMetrics(settings.ray.namespace)
    )


async def _probe(client: EmbeddingsClient, timeout_s: float) -> int:
    """The width of the vectors the endpoint answers for :data:`PROBE_TEXT`, asked until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int((await client.embed([PROBE_TEXT], None)).shape[1])
        except RejectedInputs as exc:
            raise ConfigError(f"the embedder endpoint refused a one-word request: {exc}") from exc
        except RetriableError as exc:
            if time.monotonic() + 1.0 > deadline:
                raise EmbedderUnavailable(
                    f"the embedder endpoint {client.url} did not answer a one-word request within "
                    f"{timeout_s:g}s (embedder.start_timeout_s); last failure: {exc}"
                ) from exc
            log.warning("embedder endpoint %s not answering yet (%s); asking again", client.url, exc)
            await asyncio.sleep(1.0)
