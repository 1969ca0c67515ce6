"""Pure decoding of the v1 MQTT contract: (topic, payload bytes) -> values or rejections.

No I/O and no state: the same input always gives the same output, which is what lets the
ingest tests feed it every bad-input class directly. Foreign firmware goes through
``gateway.ingest.mapping`` first; everything under ``roost/v1/`` is decoded here.

Contract (docs/mqtt.md): ``roost/v1/<node_id>/readings`` carries one reading message or a JSON
array of them; ``status`` a birth or last will; ``cmd/ack`` a command answer. Anything else under
the root is rejected with a reason, never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

import msgspec

from gateway.ingest.mapping import MappingRule
from gateway.model import CommandAck, Message, NodeStatus, Rejected

__all__ = [
    "NODE_ID_PATTERN",
    "ROOT",
    "Decoded",
    "Decoder",
    "decode_readings",
]

ROOT = "roost/v1/"
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
# 2**53: the largest integer every JSON reader (and the dashboard's JavaScript) keeps exact.
_MAX_SAFE = 2**53

_metric_ok = re.compile(METRIC_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
SafeUInt = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SAFE)]


class _Reading(msgspec.Struct, frozen=True, gc=False):
    # Metric names are checked after decoding (``_bad_metric``), not with a msgspec pattern:
    # a pattern runs its regex on every key of every message, which was 0.7 of the 1.7 us
    # msgspec spent per message. gc=False: a str -> float dict cannot form a cycle, and
    # tracking tens of thousands of these a second made the collector run often.
    b: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
    s: SafeUInt
    m: Annotated[dict[str, float], msgspec.Meta(min_length=1, max_length=64)]
    t: SafeUInt | None = None
    u: SafeUInt | None = None


class _Status(msgspec.Struct, frozen=True):
    state: Annotated[str, msgspec.Meta(pattern=r"^(online|offline|safe_mode)$")]
    fw: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    board: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    boot: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    rssi: Annotated[int, msgspec.Meta(ge=-200, le=50)] | None = None
    mem_free: Annotated[int, msgspec.Meta(ge=0, le=2**40)] | None = None
    dropped: Annotated[int, msgspec.Meta(ge=0, le=_MAX_SAFE)] | None = None


class _Ack(msgspec.Struct, frozen=True):
    id: Annotated[str, msgspec.Meta(max_length=64)]
    ok: bool
    error: Annotated[str, msgspec.Meta(max_length=256)] | None = None


_reading_decoder = msgspec.json.Decoder(_Reading | list[_Reading])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_one_reading_decoder = msgspec.json.Decoder(_Reading)
_status_decoder = msgspec.json.Decoder(_Status)
_ack_decoder = msgspec.json.Decoder(_Ack)

Decoded = Message | NodeStatus | CommandAck | Rejected


#: Metric names already seen to be valid: a node sends the same few names in every message.
_valid_metrics: set[str] = set()


def _bad_metric(metrics: dict[str, float]) -> str | None:
    """The first metric name that breaks ``METRIC_PATTERN``, or ``None``."""
    for name in metrics:
        if name not in _valid_metrics:
            if not _metric_ok(name):
                return name
            if len(_valid_metrics) < 4096:
                _valid_metrics.add(name)
    return None


def _metric_reason(name: str) -> str:
    return f"metric name {name[:80]!r} does not match {METRIC_PATTERN}"


def _as_message(node_id: str, r: _Reading) -> Message:
    # Every float is finite here: JSON has no NaN or Infinity literals (msgspec refuses them as
    # malformed) and a literal too large for a double is refused as out of range.
    return Message(node_id, r.b, r.s, r.t, r.u, tuple(r.m.items()))


def decode_readings(topic: str, node_id: str, payload: bytes) -> list[Message | Rejected]:
    """Decode a readings payload: one message or an array (a node's replay of its buffer).

    A bad element of an array is rejected on its own; the good ones are kept.
    """
    try:
        decoded = _reading_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        if payload.lstrip()[:1] != b"[":
            return [Rejected(topic, payload, f"invalid reading: {exc}", node_id)]
        return _decode_elementwise(topic, node_id, payload)
    except msgspec.DecodeError as exc:
        return [Rejected(topic, payload, f"malformed JSON: {exc}", node_id)]
    if type(decoded) is _Reading:
        bad = _bad_metric(decoded.m)
        if bad is not None:
            return [Rejected(topic, payload, f"invalid reading: {_metric_reason(bad)}", node_id)]
        return [_as_message(node_id, decoded)]
    items: Sequence[_Reading] = decoded  # type: ignore[assignment]
    if not items:
        return [Rejected(topic, payload, "empty reading array", node_id)]
    if any(_bad_metric(r.m) is not None for r in items):
        return _decode_elementwise(topic, node_id, payload)
    return [_as_message(node_id, r) for r in items]


def _decode_elementwise(topic: str, node_id: str, payload: bytes) -> list[Message | Rejected]:
    try:
        raws = _raw_list_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return [Rejected(topic, payload, f"malformed JSON: {exc}", node_id)]
    out: list[Message | Rejected] = []
    for i, raw in enumerate(raws):
        element = bytes(raw)
        try:
            r = _one_reading_decoder.decode(element)
        except msgspec.ValidationError as exc:
            out.append(Rejected(topic, element, f"invalid reading at [{i}]: {exc}", node_id))
            continue
        bad = _bad_metric(r.m)
        if bad is None:
            out.append(_as_message(node_id, r))
        else:
            reason = f"invalid reading at [{i}]: {_metric_reason(bad)}"
            out.append(Rejected(topic, element, reason, node_id))
    return out


def _decode_status(topic: str, node_id: str, payload: bytes) -> NodeStatus | Rejected:
    try:
        s = _status_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Rejected(topic, payload, f"invalid status: {exc}", node_id)
    return NodeStatus(
        node_id=node_id,
        state=s.state,
        fw=s.fw,
        board=s.board,
        boot=s.boot,
        ip=s.ip,
        rssi=s.rssi,
        mem_free=s.mem_free,
        dropped=s.dropped,
    )


def _decode_ack(topic: str, node_id: str, payload: bytes) -> CommandAck | Rejected:
    try:
        a = _ack_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Rejected(topic, payload, f"invalid command ack: {exc}", node_id)
    return CommandAck(node_id=node_id, command_id=a.id, ok=a.ok, error=a.error)


class Decoder:
    """Routes a topic to its decoder: the v1 contract first, then the mapping rules in order."""

    def __init__(
        self,
        rules: Sequence[MappingRule] = (),
        *,
        max_payload_bytes: int = 65536,
        node_id_pattern: str = NODE_ID_PATTERN,
    ) -> None:
        self._rules = tuple(rules)
        self._max_payload = max_payload_bytes
        # fullmatch: with match, a pattern's ``$`` also accepts a trailing newline.
        self._node_id_ok = re.compile(node_id_pattern).fullmatch
        # readings topic -> its node id, for topics already routed and checked: splitting the
        # topic and matching the node id pattern again for every message cost ~0.9 us each.
        self._readings: dict[str, str] = {}

    def decode(self, topic: str, payload: bytes) -> list[Decoded]:
        """Decode one MQTT message into zero or more values (zero: a topic we ignore on purpose).

        Never raises: whatever one message holds (5,000 levels of nesting made msgspec raise
        RecursionError, an integer too large for a float made a mapping raise OverflowError)
        becomes a reason for its quarantine, so no single publish can stop ingest.
        """
        try:
            return self._decode(topic, payload)
        except Exception as exc:  # any input-borne failure is a reason, not a crash
            reason = f"ingest failed: {type(exc).__name__}: {exc}"[:500]
            return [Rejected(topic, payload, reason)]

    def _decode(self, topic: str, payload: bytes) -> list[Decoded]:
        node_id = self._readings.get(topic)
        if node_id is not None and len(payload) <= self._max_payload:
            return decode_readings(topic, node_id, payload)  # type: ignore[return-value]
        if len(payload) > self._max_payload:
            return [
                Rejected(
                    topic,
                    payload,
                    f"payload of {len(payload)} bytes exceeds ingest.max_payload_bytes "
                    f"({self._max_payload})",
                )
            ]
        if topic.startswith(ROOT):
            return self._decode_v1(topic, payload)
        for rule in self._rules:
            result = rule.apply(topic, payload)
            if result is None:
                continue
            checked: list[Decoded] = []
            for item in result:
                if isinstance(item, Message) and not self._node_id_ok(item.node_id):
                    checked.append(
                        Rejected(topic, payload, f"node id {item.node_id!r} is not allowed")
                    )
                else:
                    checked.append(item)
            return checked
        return [Rejected(topic, payload, "no mapping rule matches this topic")]

    def _decode_v1(self, topic: str, payload: bytes) -> list[Decoded]:
        parts = topic[len(ROOT) :].split("/")
        node_id = parts[0]
        kind = "/".join(parts[1:])
        if kind == "cmd" or kind == "committed":
            # The gateway's own commands and committed marks to the node: not input, ignored.
            return []
        if not self._node_id_ok(node_id):
            return [Rejected(topic, payload, f"node id {node_id[:80]!r} is not allowed")]
        if kind == "readings":
            if len(self._readings) < 65536:
                self._readings[topic] = node_id
            return list(decode_readings(topic, node_id, payload))
        if kind == "status":
            if not payload:
                # An empty retained message clears the retained status: nothing to record.
                return []
            return [_decode_status(topic, node_id, payload)]
        if kind == "cmd/ack":
            return [_decode_ack(topic, node_id, payload)]
        return [Rejected(topic, payload, f"unknown topic kind {kind[:80]!r}", node_id)]
