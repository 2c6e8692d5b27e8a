"""Flash messages: the result or refusal of an action, shown once on the page the browser
is sent back to. Kept in the console's memory under a digest of the session's secret (a
refusal's words may name embargoed things, so they never travel in a URL or a cookie)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

_KEPT = 20  # per session: a page that is never loaded again does not grow the store


@dataclass(frozen=True)
class Flash:
    kind: str  # "ok", "warning" or "error"
    text: str


class Flashes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Flash]] = {}

    @staticmethod
    def _key(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def add(self, secret: str, kind: str, text: str) -> None:
        with self._lock:
            shown = self._waiting.setdefault(self._key(secret), [])
            shown.append(Flash(kind, text))
            del shown[:-_KEPT]

    def take(self, secret: str) -> list[Flash]:
        with self._lock:
            return self._waiting.pop(self._key(secret), [])
