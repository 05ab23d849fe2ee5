"""Cutting texts into requests for a remote endpoint, by the tokens counted with the model's tokenizer."""

from __future__ import annotations

from typing import Protocol

from pipeline.settings.embedder import EmbedderSettings
from workers.errors import InputTooLong


class TokenCounter(Protocol):
    """What the remote backend needs of the model's tokenizer (a
    :class:`workers.model.tokenizer.TextTokenizer`)."""

    @property
    def num_special_tokens(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...


def plan_requests(counts: list[int], max_length: int, settings: EmbedderSettings) -> list[list[int]]:
    """The positions of the texts whose token ``counts`` (special tokens included) are given, cut in
    order into requests of at most ``max_request_inputs`` texts and ``max_request_tokens`` tokens (a
    text over the token budget alone goes alone).  InputTooLong for the first text over ``max_length``:
    it would be truncated by the server, or refused there."""
    requests: list[list[int]] = []
    budget = 0
    for index, tokens in enumerate(counts):
        if tokens > max_length:
            raise InputTooLong(index, tokens, max_length)
        full = requests and (
            len(requests[-1]) >= settings.max_request_inputs or budget + tokens > settings.max_request_tokens
        )
        if not requests or full:
            requests.append([])
            budget = 0
        requests[-1].append(index)
        budget += tokens
    return requests
