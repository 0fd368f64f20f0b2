"""Passwords, session tokens and CSRF tokens for the web pages.

- Passwords: argon2id (argon2-cffi defaults: 64 MiB and ~50 ms of CPU per hash,
  so the routes run at most ``HASH_SLOTS`` at once), rehashed on sign-in when the
  parameters change. At least 10 characters, not only whitespace, not one of the
  most common passwords (``common-passwords.txt``), not the email.
- Sessions: a random 256-bit token in the ``gr_session`` cookie (HttpOnly,
  SameSite=Lax, Secure on https, Path=/); the database keeps only its SHA-256,
  so a leaked table cannot be replayed. A new token on every sign-in.
- CSRF: signed double-submit. The ``gr_csrf`` cookie holds a random value; forms
  carry HMAC-SHA256(web key, value) in ``csrf_token`` (fetch calls in the
  ``X-CSRF-Token`` header). A cross-site page can neither read the cookie nor
  forge the HMAC. POSTs whose Origin names another host are refused as well.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

SESSION_COOKIE = "gr_session"
CSRF_COOKIE = "gr_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_DAYS = 30
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]{2,}$")

_hasher = PasswordHasher()
# Verifying against this keeps "no such user" as slow as "wrong password".
_DUMMY_HASH = _hasher.hash("gigarouter: no such user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def email_problem(email: str) -> str | None:
    if not _EMAIL.match(email) or len(email) > 320:
        return "Enter an email address like name@example.com."
    return None


def password_problem(password: str, email: str | None = None) -> str | None:
    """Why a new password is refused, or None. Checked before any hashing (it costs nothing)."""
    if not password.strip():
        return "Use a password that is more than spaces."
    if len(password) < MIN_PASSWORD:
        return f"Use a password of at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"Use a password of at most {MAX_PASSWORD} characters."
    if password.strip().lower() in common_passwords():
        return "That password is one of the most common ones, the first an attacker tries. Choose another."
    if email and password.strip().lower() == email.strip().lower():
        return "Use a password other than your email address."
    return None


@functools.cache
def common_passwords() -> frozenset[str]:
    """The bundled list (``common-passwords.txt``: the most common passwords of 10+ characters, lower-cased)."""
    text = resources.files("gigarouter.web").joinpath("common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_for(key: bytes, cookie_value: str) -> str:
    return hmac.new(key, b"csrf:" + cookie_value.encode("utf-8"), hashlib.sha256).hexdigest()


def csrf_valid(key: bytes, cookie_value: str | None, submitted: str | None) -> bool:
    if not cookie_value or not submitted:
        return False
    return hmac.compare_digest(csrf_for(key, cookie_value), submitted)


def web_key(server_secret: bytes) -> bytes:
    """The HMAC key for CSRF tokens, derived from the accounts' server secret (never the secret itself)."""
    return hmac.new(server_secret, b"gigarouter-web-csrf", hashlib.sha256).digest()
