"""Typed failures shared by both sides of the pipeline.

Every failure the worker can recover from is a :class:`RetriableError`; code that
catches one may try again after ``retry_after`` seconds.  Anything else is either a
bad input (handled per event) or a bug / bad configuration (stops the worker with a
clear message).  Raise these ``from`` their cause so the original traceback survives.
"""

from __future__ import annotations

from collections.abc import Mapping


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""

    retriable: bool = False


class ConfigError(PipelineError):
    """The configuration cannot work (e.g. a replica wider than the model). Fix it and restart."""


class UnknownAdapter(ConfigError):
    """A request named a LoRA adapter the model did not load (``model.adapters``): bad input, not retried."""


class InvalidTokenIds(ConfigError):
    """Token ids sent along with a text are not ids of this model's tokenizer: the sender tokenized
    with other files (a configuration error) or sent something else.  ``index``: the input's position.
    """

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"input {index}: {detail}; the sender's tokenizer must be the model's own")
        self.index, self.detail = index, detail

    def __reduce__(self) -> tuple[type[InvalidTokenIds], tuple[int, str]]:
        return type(self), (self.index, self.detail)  # crosses Ray as itself


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


class ForwardOutOfMemory(RetriableError):
    """A forward pass ran out of accelerator memory; the device's cache was freed before this was raised.

    Retriable with less work: the micro-batcher splits the batch and retries the halves under a
    smaller token budget (:mod:`workers.batch_budget`).  ``cost`` is the batch's token cost.
    """

    def __init__(self, message: str, cost: int) -> None:
        super().__init__(message, retry_after=0.0)
        self.cost = cost

    def __reduce__(self) -> tuple[type[ForwardOutOfMemory], tuple[str, int]]:
        return type(self), (str(self), self.cost)


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


class FailedInputs(PoisonInput):
    """Inputs of one embed call on which the model raised even when each ran alone in a forward pass
    (out of memory, or any other error of the model), while the model still embeds other inputs.

    ``failures`` maps each one's position in the call's texts to the reason, one line.
    """

    def __init__(self, failures: Mapping[int, str]) -> None:
        shown = "; ".join(f"input {index}: {reason}" for index, reason in sorted(failures.items())[:3])
        super().__init__(f"the model failed on {len(failures)} input(s), each run alone: {shown}")
        self.failures = dict(failures)

    def __reduce__(self) -> tuple[type[FailedInputs], tuple[dict[int, str]]]:
        return type(self), (self.failures,)  # crosses Ray as itself


class PoisonTexts(PipelineError):
    """Texts of a request that cannot be embedded even run alone; the rest of the request is fine.

    ``texts`` crash every embedder actor that runs them alone (``crashes`` times each); ``failed``
    maps each text on which the model raised, run alone (:class:`FailedInputs`), to the reason.
    Both hold the inputs exactly as they were passed to ``embed``.
    """

    def __init__(self, texts: tuple[str, ...], crashes: int, failed: Mapping[str, str] | None = None) -> None:
        self.failed = dict(failed or {})
        parts = [f"{len(texts)} text(s) crashed an embedder actor {crashes} time(s) each, run alone"]
        if self.failed:
            parts.append(f"the model failed on {len(self.failed)} text(s), run alone")
        super().__init__("; ".join(parts))
        self.texts = texts
        self.crashes = crashes

    def __reduce__(self) -> tuple[type[PoisonTexts], tuple[tuple[str, ...], int, dict[str, str]]]:
        return type(self), (self.texts, self.crashes, self.failed)


def chained(error: PipelineError, cause: BaseException) -> PipelineError:
    """``error`` with ``cause`` as its ``__cause__`` (as ``raise error from cause`` would set it)."""
    error.__cause__ = cause
    return error


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line, at most 200 characters (its type's name when it has none)."""
    text = " ".join(str(exc).split())
    return (text[:197] + "...") if len(text) > 200 else text or type(exc).__name__
