"""Sign-in to the run explorer: an API key once, then a signed session cookie.

The cookie holds the tenant, the SHA-256 of the key that signed in and an expiry, signed with
HMAC-SHA256 under ``AGENTFLEET_UI_SECRET``; it is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it, so no other site can make a signed-in
request) and ``Secure`` on HTTPS. Every request checks the signature, the expiry and that the
key still names the tenant, so revoking the key (``agentfleet keys revoke``) ends its sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

import redis

from agentfleet.producer.auth import hash_key, tenant_of, tenant_of_digest
from agentfleet.tasks.settings import Settings

COOKIE = "af_session"
#: The cookie is sent to the explorer's routes only.
COOKIE_PATH = "/ui"


@dataclass(frozen=True)
class Session:
    tenant: str
    #: SHA-256 of the API key that signed in.
    key_digest: str
    expires: float


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def sign_in(client: redis.Redis, settings: Settings, key: str) -> str | None:
    """The session cookie of API key ``key``; None if the key is unknown."""
    assert settings.api.ui_secret is not None
    tenant = tenant_of(client, settings, key)
    if tenant is None:
        return None
    expires = time.time() + settings.api.ui_session_ttl
    payload = _b64(json.dumps([tenant, hash_key(key), expires]).encode())
    return f"{payload}.{_mac(settings.api.ui_secret.get_secret_value(), payload)}"


def session_of(client: redis.Redis, settings: Settings, cookie: str | None) -> Session | None:
    """The live session ``cookie`` carries; None if it is missing, forged, expired or its key
    was revoked."""
    if not cookie or settings.api.ui_secret is None:
        return None
    payload, _, mac = cookie.partition(".")
    if not hmac.compare_digest(mac, _mac(settings.api.ui_secret.get_secret_value(), payload)):
        return None
    try:
        tenant, digest, expires = json.loads(_unb64(payload))
    except ValueError:
        return None
    if float(expires) < time.time():
        return None
    if tenant_of_digest(client, settings, str(digest)) != tenant:
        return None
    return Session(str(tenant), str(digest), float(expires))
