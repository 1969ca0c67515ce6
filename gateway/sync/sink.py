"""The sink interface and its registry.

A sink is three calls (Telegraf's output plugins are the model):

- ``connect()``: open the link; raise ``SinkUnavailable`` when it cannot;
- ``write(batch)``: deliver every message of the batch; return the ones the target refused for
  good (each with its reason: they go to the dead-letter table and never block the rest); raise
  ``SinkUnavailable`` when the link failed, and the whole batch is kept and written again;
- ``close()``.

Adding a sink is a module with a class and a ``register`` line; its settings struct lives in
``gateway/config.py`` under ``[[sinks]]`` with a ``type`` tag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

__all__ = [
    "Outgoing",
    "Refused",
    "Sink",
    "SinkUnavailable",
    "create",
    "register",
]


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """One stored reading message on its way upstream; ``id`` is the outbox cursor."""

    id: int
    node_id: str
    boot: int
    seq: int
    ts: int
    received: int
    flags: int
    #: The metrics as a JSON object, as the store assembled it (embedded in payloads as is).
    metrics: msgspec.Raw


class _Wire(msgspec.Struct, frozen=True, gc=False):
    gateway: str
    node_id: str
    boot: int
    seq: int
    ts: int
    received: int
    flags: int
    m: msgspec.Raw


_encoder = msgspec.json.Encoder()


def encode(gateway: str, msg: Outgoing) -> bytes:
    """The upstream payload: identity (for deduplication downstream), times, flags, metrics."""
    return _encoder.encode(
        _Wire(gateway, msg.node_id, msg.boot, msg.seq, msg.ts, msg.received, msg.flags, msg.metrics)
    )


class SinkUnavailable(Exception):
    """The target cannot take the batch now (link down, timeout, broker busy): retry later."""


class Refused(msgspec.Struct, frozen=True):
    """A message the target refused for good, with the target's reason."""

    message: Outgoing
    reason: str


class Sink(Protocol):
    name: str

    async def connect(self) -> None: ...

    async def write(self, batch: Sequence[Outgoing]) -> list[Refused]: ...

    async def close(self) -> None: ...


_REGISTRY: dict[str, Callable[..., Sink]] = {}


def register(kind: str, factory: Callable[..., Sink]) -> None:
    """Make ``type = "<kind>"`` in ``[[sinks]]`` build sinks with ``factory(settings, gateway)``."""
    _REGISTRY[kind] = factory


BUILT_IN = ("gateway.sync.mqtt", "gateway.sync.kafka")


def create(settings: msgspec.Struct, gateway: str) -> Sink:
    """Build the sink that the settings' ``type`` tag names."""
    import importlib

    for module in BUILT_IN:
        importlib.import_module(module)  # importing a sink module registers it
    kind = type(settings).__struct_config__.tag
    return _REGISTRY[str(kind)](settings, gateway)
