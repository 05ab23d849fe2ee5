"""The HTTP API's error responses and request bodies, shared by its routes (``api``, ``rerank_api``).

An :class:`ApiError` becomes OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``)
with its HTTP status; :func:`json_body` reads a request's body as a JSON object or raises a 400.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An error response: HTTP ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status, headers=headers)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body, a JSON object; ApiError 400 for anything else."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body
