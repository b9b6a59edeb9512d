"""Fingerprints: the sha256 of a file (a model's identity in its card and in the UIDs of the
series it writes) and a short sha256 of a text (a pseudonym or a cache key that must not
carry the text itself)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20  # models are tens of MB: hashed in pieces, never read whole


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str, length: int = 64) -> str:
    """The first ``length`` hex digits of the sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]
