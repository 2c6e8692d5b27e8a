"""Logging: one line per step with ids and codes, never content or key material.

Values that came from the wire are escaped, so a hostile address cannot forge
log lines or terminal escapes. A step logged with `event` also carries its name and
fields on the record (`step`, `fields`), so the JSON format writes them as keys, and
observers (the metrics) count steps without parsing lines or depending on log levels.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")

# Called with (step, fields) for every `event`, whatever the log level lets through.
Observer = Callable[[str, Mapping[str, object]], None]
_observers: tuple[Observer, ...] = ()  # replaced, never changed in place: read without a lock
_observers_lock = threading.Lock()


def clean(value: object, limit: int = 200) -> str:
    """Escape control characters (and backslashes) and cut long values."""
    text = str(value)
    text = _CONTROL.sub(lambda m: "\\\\" if m.group() == "\\" else f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."


def event(logger: logging.Logger, step: str, level: int = logging.INFO, **fields: object) -> None:
    """Log `step key=value ...` with every value escaped."""
    for observer in _observers:
        try:
            observer(step, fields)
        except Exception:  # a broken counter must never break the step it counts
            logging.getLogger(__name__).exception("log observer failed on %s", step)
    if not logger.isEnabledFor(level):
        return
    parts = " ".join(f"{k}={clean(v)}" for k, v in fields.items())
    logger.log(level, "%s %s", step, parts, extra={"step": step, "fields": fields})


def observe(observer: Observer) -> Callable[[], None]:
    """Call `observer` for every `event` from now on; returns what stops it."""
    global _observers
    with _observers_lock:
        _observers = (*_observers, observer)

    def stop() -> None:
        global _observers
        with _observers_lock:
            _observers = tuple(o for o in _observers if o is not observer)

    return stop


def _json_value(value: object) -> object:
    """Numbers, booleans and None as they are; everything else escaped as in text lines."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return clean(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, with its zone), level, logger, then the step
    and its fields as keys for an `event`, or the message for any other record. A
    traceback, if any, goes under "traceback" (still one line: JSON escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        step = getattr(record, "step", None)
        fields = getattr(record, "fields", None)
        if isinstance(step, str) and isinstance(fields, Mapping):
            line["step"] = step
            for key, value in fields.items():
                line[key if key not in line else f"field.{key}"] = _json_value(value)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, separators=(",", ":"))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_DATEFMT = "%Y-%m-%dT%H:%M:%S%z"


def formatter(kind: str) -> logging.Formatter:
    """The formatter of `[log] format`: "json", else key=value text lines."""
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT, TEXT_DATEFMT)


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format=TEXT_FORMAT, datefmt=TEXT_DATEFMT)
