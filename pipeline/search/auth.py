"""Who may ask: API keys for the HTTP API, sent as OpenAI clients send them (``Authorization: Bearer``).

Keys come from ``api.keys`` and ``api.keys_file``, one entry each: ``KEY`` or ``KEY TENANT``.  A key
bound to a tenant may only ask for that tenant: a request body naming another ``tenant`` is refused
with 403, and the key's tenant is put on the request (``request[TENANT]``) for the handlers.  Only
SHA-256 digests of the keys are kept, and a presented key is compared with every one of them in
constant time (:func:`hmac.compare_digest`), so neither the keys nor their lengths leak through
timing, logs or ``repr``.  With no keys configured every request is let through (and ``serve``
refuses to listen beyond loopback that way unless ``api.allow_unauthenticated``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from pipeline.settings.serving import ApiSettings
from workers.errors import ConfigError

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
"""Paths answered without a key: load balancers probe them."""

TENANT: web.RequestKey[str | None] = web.RequestKey("tenant")
"""``request[TENANT]``: the tenant of the request's key (None: a key bound to none, or no keys)."""

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="embedstream"'}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys, as digests, each with its tenant (None: any tenant)."""

    _tenants: tuple[tuple[bytes, str | None], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._tenants)} keys)"

    def __bool__(self) -> bool:
        return bool(self._tenants)

    @classmethod
    def parse(cls, entries: list[tuple[str, str]]) -> ApiKeys:
        """Keys from ``(place, entry)`` pairs, each entry ``KEY`` or ``KEY TENANT``; ConfigError naming
        the place (never the text) of a malformed entry or of a key given again with another tenant."""
        tenants: dict[bytes, str | None] = {}
        for place, entry in entries:
            words = entry.split()
            if not 1 <= len(words) <= 2:
                raise ConfigError(f"{place} must be 'KEY' or 'KEY TENANT'")
            digest, tenant = _digest(words[0]), (words[1] if len(words) == 2 else None)
            if tenants.setdefault(digest, tenant) != tenant:
                raise ConfigError(f"{place} repeats an earlier key with another tenant")
        return cls(tuple(tenants.items()))

    @classmethod
    def from_settings(cls, api: ApiSettings) -> ApiKeys:
        """The keys of ``api.keys`` and ``api.keys_file`` (read now); ConfigError when unreadable."""
        entries = [(f"api.keys[{i}]", key.get_secret_value()) for i, key in enumerate(api.keys)]
        if api.keys_file is not None:
            try:
                text = api.keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read api.keys_file {api.keys_file}: {exc.strerror}") from exc
            entries += [
                (f"api.keys_file line {n}", line)
                for n, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
        return cls.parse(entries)

    def check(self, presented: str) -> tuple[bool, str | None]:
        """Whether ``presented`` is a key, and its tenant.  Every key is compared, in constant time."""
        digest = _digest(presented)
        found, tenant = False, None
        for known, bound in self._tenants:
            if hmac.compare_digest(digest, known):  # no early exit: the time does not say which key
                found, tenant = True, bound
        return found, tenant


def is_loopback(host: str) -> bool:
    """Whether ``host`` listens on loopback only ("localhost", 127.0.0.0/8, ::1).  Any other name or
    address, "" and "0.0.0.0" included, may be reached from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(api: ApiSettings, host: str) -> ApiKeys:
    """The keys to serve ``host`` with.  ConfigError when ``host`` is beyond loopback and no key is
    configured, unless ``api.allow_unauthenticated``: /v1/search returns document text to whoever can
    reach the port.  ``serve`` logs a warning when it serves open that way (:func:`warn_if_open`)."""
    keys = ApiKeys.from_settings(api)
    if keys or is_loopback(host) or api.allow_unauthenticated:
        return keys
    raise ConfigError(
        f"refusing to serve on {host!r} without API keys: anyone who reaches it can read the documents "
        "through /v1/search. Set api.keys or api.keys_file, listen on 127.0.0.1, or set "
        "api.allow_unauthenticated = true to serve it open anyway"
    )


def warn_if_open(keys: ApiKeys, host: str) -> None:
    """Log a warning when ``host`` is beyond loopback and served without keys."""
    if not keys and not is_loopback(host):
        log.warning("serving on %r WITHOUT API keys (api.allow_unauthenticated): anyone who reaches it "
                    "can search the documents", host)  # fmt: skip


def _refusal(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def require_key(keys: ApiKeys) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: with ``keys``, a request outside :data:`OPEN_PATHS` without a valid bearer key is
    answered 401 (``invalid_api_key``, ``WWW-Authenticate: Bearer``), and one whose key is bound to a
    tenant but whose JSON body names another ``tenant`` 403.  Sets ``request[TENANT]``: the key's
    tenant, None for a key bound to none or when no keys are configured."""

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[TENANT] = None
        if not keys or request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            log.info("401 %s %s from %s: no bearer key", request.method, request.path, request.remote)
            message = "missing API key: send 'Authorization: Bearer <key>'"
            return _refusal(401, message, "invalid_api_key", _CHALLENGE)
        valid, tenant = keys.check(presented)
        if not valid:
            log.info("401 %s %s from %s: unknown key", request.method, request.path, request.remote)
            return _refusal(401, "invalid API key", "invalid_api_key", _CHALLENGE)
        if tenant is not None and request.can_read_body:
            try:
                body = await request.json()  # aiohttp keeps the bytes: the handler reads them again
            except ValueError:
                body = None  # the handler answers 400
            asked = body.get("tenant") if isinstance(body, dict) else None
            if asked is not None and asked != tenant:
                log.info("403 %s %s from %s: a key of tenant %r asked for another tenant",
                         request.method, request.path, request.remote, tenant)  # fmt: skip
                message = f"this API key may only ask for tenant {tenant!r}"
                return _refusal(403, message, "tenant_not_allowed")
        request[TENANT] = tenant
        return await handler(request)

    return authenticate
