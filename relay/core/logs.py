"""Logging: one line per step with ids and codes, never content or key material.

Values that came from the wire are escaped, so a hostile address cannot forge
log lines or terminal escapes.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def clean(value: object, limit: int = 200) -> str:
    """Escape control characters (and backslashes) and cut long values."""
    text = str(value)
    text = _CONTROL.sub(lambda m: "\\\\" if m.group() == "\\" else f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."


def event(logger: logging.Logger, step: str, level: int = logging.INFO, **fields: object) -> None:
    """Log `step key=value ...` with every value escaped."""
    parts = " ".join(f"{k}={clean(v)}" for k, v in fields.items())
    logger.log(level, "%s %s", step, parts)


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
