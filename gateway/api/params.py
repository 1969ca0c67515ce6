"""Query parameters: times, durations and lists, parsed with errors that name the parameter.

Every problem becomes a 400 whose ``detail`` starts with the parameter's name and whose
``extra.parameter`` is that name, so a program can tell which one to fix.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from litestar.exceptions import ValidationException

__all__ = ["MAX_MS", "bad_parameter", "now_ms", "parse_duration", "parse_names", "parse_time"]

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
#: Year 9999: larger instants and durations are mistakes (and would overflow SQLite's integers).
MAX_MS = 253_402_300_799_999
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def bad_parameter(name: str, problem: str) -> ValidationException:
    """A 400 naming the parameter."""
    return ValidationException(detail=f"{name}: {problem}", extra={"parameter": name})


def parse_duration(name: str, value: str) -> int:
    """``90s``, ``15m``, ``1h``, ``7d``, ``2w`` or plain milliseconds -> milliseconds (> 0)."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        ms = int(text)
    else:
        m = _DURATION.match(text)
        if m is None:
            raise bad_parameter(
                name, f"expected a duration like 30s, 15m, 1h, 7d or milliseconds, got {value!r}"
            )
        ms = int(float(m.group(1)) * _UNITS[m.group(2)])
    if not 0 < ms <= MAX_MS:
        raise bad_parameter(name, "must be longer than 0 and at most 10,000 years")
    return ms


def parse_time(name: str, value: str | None, default: int, now: int | None = None) -> int:
    """An instant as epoch ms: epoch milliseconds, ISO 8601, or ``-<duration>`` before now.

    An ISO time without a zone is UTC.
    """
    if value is None or value == "":
        return default
    text = value.strip()
    if text.startswith("-"):
        return (now_ms() if now is None else now) - parse_duration(name, text[1:])
    if text.isascii() and text.isdigit():
        ms = int(text)
        if ms > MAX_MS:
            raise bad_parameter(name, f"{value!r} is after the year 9999")
        return ms
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise bad_parameter(
            name,
            "expected ISO 8601 (2025-11-22T10:00:00Z), epoch milliseconds or -<duration> "
            f"(-1h), got {value!r}",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return int(dt.timestamp() * 1000)
    except (OverflowError, ValueError):
        raise bad_parameter(name, f"{value!r} is out of range") from None


def parse_names(name: str, values: list[str] | None) -> tuple[str, ...]:
    """Repeated or comma-separated node ids / metric names; empty means all."""
    out: list[str] = []
    for v in values or ():
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            if not _NAME.match(part):
                raise bad_parameter(name, f"{part[:80]!r} is not a valid name")
            if part not in out:
                out.append(part)
    return tuple(out)
