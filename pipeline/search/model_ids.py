"""Which model an OpenAI ``model`` field asks for: the served model, or it with one of its LoRA adapters.

The served model answers to its id (``api.model_name``, else the model's name or path); each adapter of
``model.adapters`` to ``<id>:<adapter>`` and, as vLLM names its LoRA adapters, to the adapter's name
alone.  ``GET /v1/models`` lists them all, so any OpenAI client can pick one by ``model``.
"""

from __future__ import annotations

from collections.abc import Collection

from workers.errors import UnknownAdapter


class UnknownModel(LookupError):
    """A ``model`` that names neither the served model nor one of its adapters."""


def model_ids(served: str, adapters: Collection[str]) -> list[str]:
    """Every id a request may send: the served model first, then ``served:adapter`` for each adapter."""
    return [served, *(f"{served}:{name}" for name in sorted(adapters))]


def requested_adapter(model: object, served: str, adapters: Collection[str]) -> str | None:
    """The adapter ``model`` asks for (None: the model without one, as when ``model`` is absent).

    UnknownAdapter for ``served:name`` with an adapter that is not loaded; UnknownModel for anything else
    that is not one of :func:`model_ids` or an adapter's name."""
    if model is None or model == served:
        return None
    if isinstance(model, str):
        if model in adapters:
            return model
        base, colon, name = model.rpartition(":")
        if colon and base == served:
            if name in adapters:
                return name
            raise UnknownAdapter(
                f"model {model!r}: {served!r} has no LoRA adapter {name!r} (its adapters: {sorted(adapters)})"
            )
    raise UnknownModel(
        f"model {model!r} is not served here; this server serves {model_ids(served, adapters)}"
    )
