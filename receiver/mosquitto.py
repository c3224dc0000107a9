"""Mosquitto's password-file lines, so ``smartpole receiver add-pole --mosquitto`` can print the line
that lets a new pole log in to the broker (the same ``$7$`` PBKDF2-SHA512 format ``mosquitto_passwd``
writes)."""

from __future__ import annotations

import base64
import hashlib
import secrets

# Pole passwords are their random 256-bit tokens, so the iteration count guards nothing a guess
# could find; it is kept low so that a thousand poles reconnecting after a broker restart stay cheap.
ITERATIONS = 1000


def password_line(user: str, password: str, iterations: int = ITERATIONS) -> str:
    """``user:$7$iterations$salt$hash`` for a Mosquitto ``password_file``."""
    if ":" in user or "\n" in user or not user:
        raise ValueError(f"not a usable Mosquitto user name: {user!r}")
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
