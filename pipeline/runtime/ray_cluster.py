"""Joining a Ray cluster from a driver process (the consumer, ``search``, ``serve``, tools).

Ray 2.60 turns token authentication on by default: ``ray.auth_token`` / ``ray.auth_token_path``
become the variables Ray reads, refreshed in this process even after ``ray`` was imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import ray

from pipeline.settings import Settings


def connect_ray(settings: Settings) -> str:
    """Join ``ray.address`` (unset: a private local Ray) in ``ray.namespace``; returns a description.

    A no-op when this process already joined.  The local dev stack's head is joined by pointing
    the settings at it first (:func:`pipeline.ops.stack.with_local_ray`), never from here.
    """
    if ray.is_initialized():
        return "already connected"
    token, token_path = settings.ray.auth_token, settings.ray.auth_token_path
    if token is not None:
        export_ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token.get_secret_value()})
    elif token_path is not None:
        export_ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
    try:
        ray.init(
            address=settings.ray.address,
            namespace=settings.ray.namespace,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    finally:
        if token is not None:  # Ray holds it now; the variable would hand it to every child process
            os.environ.pop("RAY_AUTH_TOKEN", None)
    return settings.ray.address or "a private local Ray"


def export_ray_auth(env: Mapping[str, str]) -> None:
    """Put Ray auth variables into this process for its next ``ray.init``.

    Setting ``os.environ`` is not enough once ``ray`` is imported: Ray 2.60 copies RAY_AUTH_MODE
    into its config at import and caches the token at first use, so both are refreshed here
    (the same private calls Ray makes when it enables token auth itself).
    """
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # not in its stub

    if "RAY_AUTH_TOKEN" not in env:
        os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over RAY_AUTH_TOKEN_PATH
    os.environ.update(env)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
