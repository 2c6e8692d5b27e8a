"""Secrets kept in files: the first line of a password or passphrase file."""

from __future__ import annotations

from pathlib import Path


def first_line(path: Path) -> str:
    """The file's first line ("" when it has none); ValueError with the reason when it
    cannot be read (missing, unreadable, not UTF-8)."""
    try:
        return next(iter(path.read_text(encoding="utf-8").splitlines()), "")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(getattr(exc, "strerror", None) or str(exc)) from None
