"""API keys and their scopes. Keys are kept as SHA-256 digests and compared in constant time.

Two scopes: `admin` keys may call every route; `use` keys may predict, evaluate and read. The HTTP layer
(app/api/deps.py) asks `KeyRing.scope_of(token)` and maps the answer to 401 or 403.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from app.config import Settings

Scope = Literal["admin", "use"]


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _configured(key: str) -> bytes:
    """A configured key's digest: `sha256:<hex>` is already one (nothing secret at rest), else hash it now."""
    return bytes.fromhex(key[7:]) if key.startswith("sha256:") else digest(key)


class KeyRing:
    def __init__(self, admin_keys: list[str], use_keys: list[str], enabled: bool = True):
        self.enabled = enabled
        self._keys: list[tuple[bytes, Scope]] = [(_configured(k), "admin") for k in admin_keys]
        self._keys += [(_configured(k), "use") for k in use_keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.admin_api_keys, settings.api_keys, settings.auth)

    def check_startable(self) -> None:
        if self.enabled and not self._keys:
            raise RuntimeError(
                "auth is on but no API key is configured: set PEFTSERVE_ADMIN_API_KEYS (and PEFTSERVE_API_KEYS"
                " for predict/read-only clients), or PEFTSERVE_AUTH=false for local development only"
            )

    def scope_of(self, token: str | None) -> Scope | None:
        """The scope of a presented key, or None. Every configured key is compared (no early exit)."""
        if not token:
            return None
        presented = digest(token)
        found: Scope | None = None
        for key, scope in self._keys:
            if hmac.compare_digest(presented, key) and found != "admin":
                found = scope
        return found

    def allows(self, scope: Scope | None, needed: Scope) -> bool:
        return scope == "admin" or scope == needed
