"""Tenants: one metadata key (``milvus.tenant_field``) names the tenant of every document.

With it set, every replica has a ``tenant`` VARCHAR field declared as Milvus' partition key, filled at
write time from that key of the document's metadata, and every search is confined to one tenant by a
condition on that field, which :meth:`pipeline.milvus.sink.MilvusSink.search` and
:meth:`~pipeline.milvus.sink.MilvusSink.fetch` AND into every request they send.

Guarantees:

* A document is written only with a usable tenant (:func:`tenant_of`: a non-empty string of at most
  :data:`TENANT_MAX_BYTES` UTF-8 bytes); ingestion dead-letters one without (``missing_tenant``), never
  giving it a default tenant.
* A search names one tenant and sees only rows of that tenant: the condition is built from
  :func:`pipeline.milvus.expr.quote` (the tenant matches only itself) and ANDed outside a user filter,
  which can therefore only narrow it.  A search without a tenant is refused (:class:`TenantRequired`).
* The condition is ``tenant == "T"``, which lets Milvus search only T's partition, except on servers
  that may hold upserted rows in the wrong partition (Milvus before 2.4: milvus-io/milvus#30607, the
  upsert hashed another field; 2.3.5 does), where a partition-pruned search would miss them: there it
  is the equivalent range ``tenant >= "T" and tenant <= "T"``, which Milvus does not prune
  (:func:`prunes_by_key`).

Document ids are one namespace across tenants: an upsert of id ``x`` replaces ``x`` whatever tenant
held it (producers are trusted; prefix ids with the tenant if two tenants may use one id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pipeline.milvus.expr import quote

TENANT_FIELD = "tenant"
"""The replica field (Milvus partition key) holding each row's tenant."""
TENANT_MAX_BYTES = 1024
"""Longest tenant, in UTF-8 bytes (the VARCHAR length of :data:`TENANT_FIELD`)."""
TENANT_PROPERTY = "embedstream.tenant_field"
"""The collection property recording which metadata key filled :data:`TENANT_FIELD`."""

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


class TenantRequired(ValueError):
    """A search of a deployment with tenants that names no tenant."""


def tenant_of(metadata: Mapping[str, object], key: str) -> str:
    """The tenant of a document with ``metadata``: its value at ``key``.  ValueError saying why when it
    is absent, not a string, empty, or longer than :data:`TENANT_MAX_BYTES` UTF-8 bytes."""
    if key not in metadata:
        raise ValueError(f"metadata has no {key!r} (milvus.tenant_field): every document needs a tenant")
    value = metadata[key]
    if not isinstance(value, str):
        raise ValueError(f"metadata {key!r} (the tenant) is a {type(value).__name__}, not a string")
    if not value:
        raise ValueError(f"metadata {key!r} (the tenant) is empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > TENANT_MAX_BYTES:
        raise ValueError(f"metadata {key!r} (the tenant) has {size} UTF-8 bytes, over {TENANT_MAX_BYTES}")
    return value


def check_tenant(tenant_field: str | None, tenant: object) -> str | None:
    """The tenant a search asked for, checked against the deployment: with ``tenant_field`` set a
    non-empty string (:class:`TenantRequired` when None), without it None (ValueError otherwise: a
    caller that believes it is confined to a tenant must not get every tenant's rows)."""
    if tenant_field is None:
        if tenant is not None:
            raise ValueError(
                "this deployment has no tenants (milvus.tenant_field is unset), so a search cannot name one"
            )
        return None
    if tenant is None:
        raise TenantRequired(
            f"every search must name its tenant (milvus.tenant_field is {tenant_field!r}): "
            "search --tenant T, 'tenant' in the /v1/search body, or an API key bound to a tenant"
        )
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("'tenant' must be a non-empty string")
    return tenant


def prunes_by_key(server_version: str) -> bool:
    """Whether a server reporting ``server_version`` finds every row by a partition-key equality: Milvus
    Lite and Milvus 2.4 on; not Milvus before 2.4, nor a version this cannot read (module docstring)."""
    if server_version.startswith("milvus_lite"):
        return True
    match = _VERSION.match(server_version.strip())
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (2, 4)


def tenant_condition(tenant: str, *, prunes: bool) -> str:
    """The expression matching exactly the rows of ``tenant``: an equality when the server
    :func:`prunes_by_key` correctly, else the equivalent closed range (strings compare bytewise)."""
    literal = quote(tenant)
    if prunes:
        return f"{TENANT_FIELD} == {literal}"
    return f"{TENANT_FIELD} >= {literal} and {TENANT_FIELD} <= {literal}"


def scoped(condition: str | None, where: str | None) -> str | None:
    """``where`` confined by ``condition`` (either may be None): the user's filter sits inside its own
    parentheses, ANDed with the condition, so that it can only narrow it."""
    if condition is None:
        return where
    return f"({condition}) and ({where})" if where else condition
