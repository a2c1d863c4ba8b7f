"""Access control of the web app: one access token, browser sessions in a signed cookie, and
CSRF tokens bound to the session. Every secret is compared in constant time.

* API clients send ``Authorization: Bearer <token>``.
* A browser logs in once with the token (``/login?token=…`` or the login form) and gets a session
  cookie (HttpOnly, SameSite=Strict) signed with the app's secret; the session names the token it
  was opened with, so a new token ends old sessions.
* Each session has a CSRF token (an HMAC of the session id) that every mutation made with the
  cookie must carry, in the ``X-CSRF-Token`` header or the ``_csrf`` form field.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "conveyor_session"
SESSION_MAX_AGE = 7 * 86400


def generate_token() -> str:
    """A fresh random access token (192 bits)."""
    return secrets.token_urlsafe(24)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (False when either is missing)."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Session:
    """A browser session: its id, from which the CSRF token is derived."""

    sid: str


class Auth:
    """Checks credentials for one web app.

    Args:
        token: the access token.
        secret: key for cookies and CSRF tokens (default: derived from the token, so sessions
            survive a restart with the same token).
    """

    def __init__(self, token: str, secret: str | None = None, max_age: int = SESSION_MAX_AGE) -> None:
        if not token:
            raise ValueError("the access token must not be empty")
        self.token = token
        key = secret.encode() if secret else hmac.new(token.encode(), b"conveyor web secret", hashlib.sha256).digest()
        self._key = key
        self._signer = URLSafeTimedSerializer(key.hex(), salt="conveyor-session")
        self.max_age = max_age
        # Names the token a session was opened with, without revealing it.
        self._token_id = hmac.new(key, b"token:" + token.encode(), hashlib.sha256).hexdigest()[:16]

    def check_token(self, candidate: str | None) -> bool:
        return same(candidate, self.token)

    def check_bearer(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token as a bearer credential."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def open_session(self) -> str:
        """A new session, as the signed cookie value."""
        return self._signer.dumps({"sid": secrets.token_urlsafe(16), "tk": self._token_id})

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie value stands for, or None (missing, forged, expired, old token)."""
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not same(str(data.get("tk")), self._token_id):
            return None
        sid = data.get("sid")
        return Session(sid) if isinstance(sid, str) and sid else None

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._key, b"csrf:" + session.sid.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session, candidate: str | None) -> bool:
        return same(candidate, self.csrf_token(session))
