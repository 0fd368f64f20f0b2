"""API key format, hashing and scopes; the server secret that keys are hashed with.

A key reads ``gr-<prefix>-<secret>``: a 10-character public prefix (lower-case
letters and digits, unique and indexed, safe to show in listings and logs)
and a 40-character secret (about 238 bits). The database stores the prefix
and HMAC-SHA256(server secret, whole key) only, so a copy of the database
alone cannot be turned into working keys; verification compares digests with
``hmac.compare_digest``. The whole key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gigarouter.settings import ConfigError, Settings

log = logging.getLogger(__name__)

PREFIX_LEN = 10
SECRET_LEN = 40
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(rf"^gr-([a-z0-9]{{{PREFIX_LEN}}})-([A-Za-z0-9]{{{SECRET_LEN}}})$")

SCOPES = ("embed", "usage:read", "keys:manage", "admin")
#: What a sign-up key (and a key created without ``scopes``) may do: everything but admin.
DEFAULT_SCOPES = frozenset({"embed", "usage:read", "keys:manage"})

SECRET_FILE = "server_secret"
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: ``key`` goes to the user once, ``digest`` to the database."""

    key: str
    prefix: str
    digest: str


def generate(server_secret: bytes) -> NewKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LEN))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LEN))
    key = f"gr-{prefix}-{secret}"
    return NewKey(key=key, prefix=prefix, digest=digest(server_secret, key))


def digest(server_secret: bytes, key: str) -> str:
    return hmac.new(server_secret, key.encode("ascii"), hashlib.sha256).hexdigest()


def verify(server_secret: bytes, key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(server_secret, key), stored_digest)


def parse(key: str) -> str | None:
    """The public prefix of a well-formed key, else None."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def from_authorization(header: str | None) -> str | None:
    """The key in ``Authorization: Bearer <key>``; None when the header is absent or not a bearer token."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def display(prefix: str) -> str:
    """How a key is shown after creation: its prefix and an ellipsis, never the secret."""
    return f"gr-{prefix}-..."


# -- scopes --------------------------------------------------------------------------------------

def normalize_scopes(scopes: Iterable[str] | None) -> frozenset[str]:
    chosen = DEFAULT_SCOPES if scopes is None else frozenset(scopes)
    unknown = chosen - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
    if not chosen:
        raise ValueError("a key needs at least one scope")
    return chosen


def encode_scopes(scopes: Iterable[str]) -> str:
    return " ".join(sorted(scopes))


def decode_scopes(stored: str) -> frozenset[str]:
    return frozenset(stored.split())


def allows(scopes: frozenset[str], needed: str) -> bool:
    """``admin`` implies every scope: an operator's key can do what any key can."""
    return needed in scopes or "admin" in scopes


# -- the server secret ---------------------------------------------------------------------------

def server_secret(settings: Settings) -> bytes:
    """Settings.server_secret, else the secret in ``data_dir/server_secret`` (created 0600 on first use).

    Every gateway that shares a database must use the same secret: set
    ``server_secret`` (or share the file) when running more than one.
    """
    if settings.server_secret is not None:
        if len(settings.server_secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"server_secret must be at least {MIN_SECRET_CHARS} characters")
        return settings.server_secret.encode("utf-8")
    return _secret_file(Path(settings.data_dir) / SECRET_FILE)


def _secret_file(path: Path) -> bytes:
    if path.exists():
        return _read_secret(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Write a private temporary file, then link it into place: the link either
    # creates the whole file or fails because another process won the race,
    # so nobody ever reads a half-written secret.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
            log.info("generated a new server secret in %s", path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} is readable by other users; run: chmod 600 {path}")
    value = path.read_text(encoding="ascii").strip()
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(f"{path} holds no usable secret (delete it to generate a new one)")
    return value.encode("ascii")
