"""Who may use the web page: one login token, signed session cookies and CSRF tokens.

Theory of operation
-------------------
The node keeps one random token in ``<home>/web-token`` (mode 0600, created at the first start).
Whoever can read that file is the node's user; ``parley web`` prints a link carrying it.

* A browser opens ``/login?token=...`` once; the token is checked (in constant time) and
  exchanged for a session cookie (``HttpOnly; SameSite=Strict``), then the browser is sent on
  to the page without the token in its address.
* Scripts send ``Authorization: Bearer <token>`` with every request instead.

Sessions are stateless: the cookie is ``<nonce>.<HMAC(token, "session" + nonce)>``, so sessions
survive a node restart, and replacing the token file ends every session at once. A session's
CSRF token is ``HMAC(token, "csrf" + nonce)``: the pages carry it in a ``<meta>`` tag and send it
back as the ``X-CSRF-Token`` header (or a ``csrf_token`` form field) on every state-changing
request. Bearer requests need no CSRF token: a browser never adds that header on its own, so a
forged cross-site request cannot carry it.

This module is pure apart from :func:`load_or_create_token` (which touches the file).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from common.atomic import write_atomic

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "TOKEN_FILE_NAME",
    "AuthMethod",
    "Credentials",
    "TokenFileError",
    "WebAuth",
    "load_or_create_token",
]

TOKEN_FILE_NAME: Final = "web-token"
SESSION_COOKIE: Final = "parley_session"
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf_token"
#: Random bytes in a token and in a session nonce.
TOKEN_BYTES: Final = 32
NONCE_BYTES: Final = 16
#: Longest cookie or header value looked at (anything longer is refused unread).
MAX_CREDENTIAL_CHARS: Final = 512


class TokenFileError(Exception):
    """The token file exists but cannot be used (unreadable, empty, too open)."""


class AuthMethod(enum.Enum):
    COOKIE = "cookie"
    BEARER = "bearer"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An authenticated request: how it proved itself and, for a session, its CSRF token."""

    method: AuthMethod
    csrf_token: str | None


def load_or_create_token(home_root: Path) -> str:
    """The token in ``<home>/web-token``, creating it (0600) when missing."""
    path = home_root / TOKEN_FILE_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        write_atomic(path, token.encode("ascii"), mode=0o600)
        return token
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"{path}: cannot read the web token: {error}") from None
    if path.stat().st_mode & 0o077:
        raise TokenFileError(f"{path}: readable by other users; chmod 600 it (or delete it)")
    if len(text) < 16 or len(text) > MAX_CREDENTIAL_CHARS:
        raise TokenFileError(f"{path}: not a web token (delete it to make a new one)")
    return text


class WebAuth:
    """Checks tokens, makes and checks session cookies and CSRF tokens for one node token."""

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the web token must have at least 16 characters")
        self._token = token
        self._key = hashlib.sha256(token.encode()).digest()

    def token_matches(self, candidate: str) -> bool:
        if len(candidate) > MAX_CREDENTIAL_CHARS:
            return False
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def new_session(self) -> str:
        """A fresh session cookie value."""
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        return f"{nonce}.{self._sign('session', nonce)}"

    def check_session(self, cookie: str) -> Credentials | None:
        """The credentials a session cookie stands for, or ``None`` if it is not ours."""
        if len(cookie) > MAX_CREDENTIAL_CHARS or cookie.count(".") != 1:
            return None
        nonce, signature = cookie.split(".")
        if not nonce or not hmac.compare_digest(signature, self._sign("session", nonce)):
            return None
        return Credentials(AuthMethod.COOKIE, self._sign("csrf", nonce))

    def check_bearer(self, authorization: str) -> Credentials | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self.token_matches(value.strip()):
            return None
        return Credentials(AuthMethod.BEARER, None)

    @staticmethod
    def csrf_ok(credentials: Credentials, presented: str | None) -> bool:
        """Whether a state-changing request from ``credentials`` may go ahead."""
        if credentials.method is AuthMethod.BEARER:
            return True
        if presented is None or credentials.csrf_token is None:
            return False
        if len(presented) > MAX_CREDENTIAL_CHARS:
            return False
        return hmac.compare_digest(presented, credentials.csrf_token)

    def _sign(self, purpose: str, nonce: str) -> str:
        digest = hmac.new(self._key, f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()
        return digest
