"""Topic-mapping rules: how foreign firmware (Tasmota, ESPHome, tutorial sketches) is ingested.

A rule names a topic pattern whose ``{name}`` segments capture values, templates that build the
node id and metric name from them, and the payload kind:

- ``number``: the payload is a bare number (``pico/temperature/dht22`` -> ``21.4``);
- ``json``: the payload is a JSON object whose numeric fields are metrics, nested objects
  flattened with ``_`` (Tasmota ``tele/<node>/SENSOR`` -> ``{"AM2301":{"Temperature":21.4}}``
  gives ``am2301_temperature``).

Metric names are normalised to snake_case and then renamed through ``rename``. Such firmware has
no (boot, seq) identity: the store assigns one per node and flags the rows, so nothing is lost,
but a broker redelivery of a mapped message cannot be told from a new reading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.model import Flags, Message, Rejected

__all__ = ["MappingRule", "snake_case"]

_SEGMENT = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_METRIC_OK = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_FLAGS = int(Flags.MAPPED | Flags.SYNTHETIC_ID)


def snake_case(name: str) -> str:
    """``Temperature`` -> ``temperature``, ``AM2301-Humidity`` -> ``am2301_humidity``."""
    return _NON_WORD.sub("_", _CAMEL.sub("_", name).lower()).strip("_")


def _flatten(prefix: str, obj: Mapping[str, Any], out: dict[str, float]) -> None:
    for key, value in obj.items():
        name = f"{prefix}_{snake_case(key)}" if prefix else snake_case(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict):
            _flatten(name, value, out)


@dataclass(frozen=True, slots=True)
class MappingRule:
    """One rule; see the module docstring. ``topic`` is an MQTT topic with ``{name}`` segments."""

    name: str
    topic: str
    payload: str = "number"
    node: str = "{node_id}"
    metric: str = "{metric}"
    rename: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.payload not in ("number", "json"):
            raise ValueError(f"payload must be 'number' or 'json', not {self.payload!r}")
        names = self.captures
        for template in (self.node, self.metric if self.payload == "number" else ""):
            for ref in re.findall(r"\{([^}]*)\}", template):
                if ref not in names:
                    raise ValueError(f"template refers to {{{ref}}}, which the topic lacks")

    @property
    def captures(self) -> tuple[str, ...]:
        """The names the topic pattern captures, in order."""
        out = []
        for seg in self.topic.split("/"):
            m = _SEGMENT.match(seg)
            if m:
                out.append(m.group(1))
        return tuple(out)

    @property
    def subscription(self) -> str:
        """The MQTT topic filter that receives what this rule maps."""
        return "/".join("+" if _SEGMENT.match(s) else s for s in self.topic.split("/"))

    def match(self, topic: str) -> dict[str, str] | None:
        """The captured segments, or ``None`` when the topic does not fit the pattern."""
        pattern = self.topic.split("/")
        parts = topic.split("/")
        if len(parts) != len(pattern):
            return None
        values: dict[str, str] = {}
        for want, got in zip(pattern, parts, strict=True):
            m = _SEGMENT.match(want)
            if m:
                if not got:
                    return None
                values[m.group(1)] = got
            elif want != got:
                return None
        return values

    def apply(self, topic: str, payload: bytes) -> list[Message | Rejected] | None:
        """Map one message; ``None`` when this rule does not apply to the topic."""
        values = self.match(topic)
        if values is None:
            return None
        node_id = self.node.format(**values)
        metrics: dict[str, float] = {}
        if self.payload == "number":
            try:
                value = float(payload.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return [Rejected(topic, payload, f"rule {self.name!r}: payload is not a number")]
            metrics[snake_case(self.metric.format(**values))] = value
        else:
            try:
                obj = msgspec.json.decode(payload)
            except msgspec.DecodeError as exc:
                return [Rejected(topic, payload, f"rule {self.name!r}: malformed JSON: {exc}")]
            if not isinstance(obj, dict):
                return [Rejected(topic, payload, f"rule {self.name!r}: payload is not an object")]
            _flatten("", obj, metrics)
            if not metrics:
                return [Rejected(topic, payload, f"rule {self.name!r}: no numeric fields")]
        renamed: dict[str, float] = {}
        for name, value in metrics.items():
            final = self.rename.get(name, name)
            if not _METRIC_OK.match(final):
                return [Rejected(topic, payload, f"rule {self.name!r}: bad metric name {final!r}")]
            if not math.isfinite(value):
                return [Rejected(topic, payload, f"rule {self.name!r}: {final} is not finite")]
            renamed[final] = value
        return [
            Message(
                node_id=node_id,
                boot=None,
                seq=None,
                t=None,
                uptime_ms=None,
                metrics=tuple(renamed.items()),
                flags=_FLAGS,
            )
        ]
