"""The web page's password file: one ``user:pbkdf2-sha256$iterations$salt$hash`` line per user
(salt and hash in base64), written by ``media-sessions web-password USER``. Blank lines and
lines starting with ``#`` are ignored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCHEME = "pbkdf2-sha256"
ITERATIONS = 200_000
MAX_ITERATIONS = 10_000_000  # a file's iteration count could otherwise stall the reactor for minutes
MAX_USERS = 1000


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def entry(user: str, password: str) -> str:
    """The password file's line for ``user``."""
    if not user or ":" in user or not user.isprintable():
        raise ValueError("a user name is printable and has no ':'")
    return f"{user}:{hash_password(password)}"


class PasswordFile:
    """The users of a password file, read once (:meth:`load`); :meth:`check` verifies a password."""

    def __init__(self, users: dict[str, tuple[int, bytes, bytes]]) -> None:
        self.users = users

    @classmethod
    def load(cls, path: str) -> PasswordFile:
        """The file's users; ValueError naming the file and line for anything else."""
        try:
            with open(path, encoding="utf-8") as stream:
                lines = stream.read(1 << 20).splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
        users: dict[str, tuple[int, bytes, bytes]] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                user, hashed = line.strip().split(":", 1)
                users[user] = _parse_hash(hashed)
            except ValueError:
                raise ValueError(f"{path}, line {number}: expected user:{SCHEME}$iterations$salt$hash") from None
            if len(users) > MAX_USERS:
                raise ValueError(f"{path}: more than {MAX_USERS} users")
        if not users:
            raise ValueError(f"{path}: no users")
        return cls(users)

    def check(self, user: str, password: str) -> bool:
        known = self.users.get(user)
        if known is None:
            return False
        iterations, salt, digest = known
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations), digest)


def _parse_hash(text: str) -> tuple[int, bytes, bytes]:
    scheme, iterations, salt, digest = text.split("$")
    if scheme != SCHEME or not iterations.isascii() or not iterations.isdigit() or not 0 < int(iterations) <= MAX_ITERATIONS:
        raise ValueError("not a pbkdf2-sha256 hash")
    try:
        return int(iterations), base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except ValueError:
        raise ValueError("bad base64") from None
