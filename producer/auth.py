"""API keys and tenants.

A key is ``af_`` followed by 32 random bytes in URL-safe base64. Only its SHA-256 is kept: in
the Redis hash ``<prefix>:apikeys`` (``agentfleet keys create --tenant NAME``) or in
``AGENTFLEET_API_KEYS`` (``{"<sha256 hex>": "tenant"}``), so neither a Redis dump nor the
configuration gives a usable key away. Every ``/v1`` route needs ``Authorization: Bearer <key>``
and sees only its tenant's runs, tool calls and batches.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Annotated, cast

import redis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentfleet.tasks import keys
from agentfleet.tasks.errors import Unauthorized
from agentfleet.tasks.models import TENANT_PATTERN
from agentfleet.tasks.settings import Settings

KEY_PREFIX = "af_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_hash(settings: Settings) -> str:
    return keys.api_keys(settings.redis.key_prefix)


def create_key(client: redis.Redis, settings: Settings, tenant: str) -> str:
    """A new key for ``tenant``, stored hashed; the only time the key itself is seen."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError(f"tenant must match {TENANT_PATTERN.pattern}, got {tenant!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    client.hset(keys_hash(settings), hash_key(key), tenant)
    return key


def revoke_key(client: redis.Redis, settings: Settings, key_or_hash: str) -> bool:
    digest = key_or_hash if re.fullmatch(r"[0-9a-f]{64}", key_or_hash) else hash_key(key_or_hash)
    return bool(client.hdel(keys_hash(settings), digest))


def list_keys(client: redis.Redis, settings: Settings) -> dict[str, str]:
    """Hash -> tenant of every key stored in Redis."""
    return cast(dict[str, str], client.hgetall(keys_hash(settings)))


def tenant_of(client: redis.Redis, settings: Settings, key: str) -> str | None:
    return tenant_of_digest(client, settings, hash_key(key))


def tenant_of_digest(client: redis.Redis, settings: Settings, digest: str) -> str | None:
    """The tenant of the key whose SHA-256 is ``digest``; None once it is revoked."""
    configured = settings.api.api_keys.get(digest)
    if configured is not None:
        return configured
    return cast(str | None, client.hget(keys_hash(settings), digest))


_bearer = HTTPBearer(auto_error=False, description="An agentfleet API key.")


def require_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's tenant; 401 without a known key."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    settings: Settings = request.app.state.settings
    from agentfleet.tasks.store import get_store

    tenant = tenant_of(get_store(settings).redis, settings, credentials.credentials)
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


TenantDep = Annotated[str, Depends(require_tenant)]
