"""Typed failures shared by both sides of the pipeline.

Every failure the worker can recover from is a :class:`RetriableError`; code that
catches one may try again after ``retry_after`` seconds.  Anything else is either a
bad input (handled per event) or a bug / bad configuration (stops the worker with a
clear message).  Raise these ``from`` their cause so the original traceback survives.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""

    retriable: bool = False


class ConfigError(PipelineError):
    """The configuration cannot work (e.g. a replica wider than the model). Fix it and restart."""


class RetriableError(PipelineError):
    """A transient failure: the same call may succeed after ``retry_after`` seconds."""

    retriable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Backpressure(RetriableError):
    """A bounded queue is full: the caller must slow down and try again later."""


class EmbedderUnavailable(RetriableError):
    """An embedder actor died or could not be reached; Ray restarts it."""


class PoisonInput(PipelineError):
    """One input is rejected by a downstream component for good (e.g. Milvus refuses a value)."""


class InputTooLong(PoisonInput):
    """A model input holds more tokens than the model takes: refused whole, never truncated.

    ``index`` is its position in the texts tokenized together; ``tokens`` counts the special ones.
    """

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens; the model takes at most {limit} (special tokens included). "
            "It is refused, not truncated: send a shorter text"
        )
        self.index, self.tokens, self.limit = index, tokens, limit

    def __reduce__(self) -> tuple[type[InputTooLong], tuple[int, int, int]]:
        return type(self), (self.index, self.tokens, self.limit)  # crosses Ray as itself


class PoisonTexts(PipelineError):
    """Texts that crash every embedder actor that runs them alone; the rest of the request is fine.

    ``texts`` are the offending inputs exactly as they were passed to ``embed``.
    """

    def __init__(self, texts: tuple[str, ...], crashes: int) -> None:
        super().__init__(f"{len(texts)} text(s) crashed an embedder actor {crashes} time(s) each, run alone")
        self.texts = texts
        self.crashes = crashes
