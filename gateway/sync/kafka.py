"""The ``kafka`` sink: aiokafka with acks=all; key = node_id, so one node's readings stay in
one partition, in order; headers carry the identity (node_id, boot, seq) for deduplication.

Idempotence is an option for real Kafka clusters (``idempotence = true``); it stays off by
default because brokers that lack InitProducerId v3+ (tansu 0.6, used in the tests) refuse the
producer at start. The (node_id, boot, seq) identity in every record makes downstream
deduplication possible either way. gzip is the default codec: it needs no extra native package
(lz4, snappy and zstd need ``aiokafka[lz4,snappy,zstd]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway.config import KafkaSinkSettings
from gateway.sync.sink import Outgoing, Refused, SinkUnavailable, encode, register

__all__ = ["KafkaSink"]


class KafkaSink:
    """See the module docstring."""

    def __init__(self, settings: KafkaSinkSettings, gateway: str) -> None:
        self.name = settings.name
        self.settings = settings
        self.gateway = gateway
        self._producer: AIOKafkaProducer | None = None

    def _options(self) -> dict[str, Any]:
        s = self.settings
        opts: dict[str, Any] = {
            "bootstrap_servers": s.bootstrap,
            "client_id": f"roost-{self.gateway}-{s.name}",
            "acks": "all",
            "enable_idempotence": s.idempotence,
            "linger_ms": s.linger_ms,
            "compression_type": None if s.compression == "none" else s.compression,
            "security_protocol": s.security_protocol,
            "request_timeout_ms": 15000,
            "max_batch_size": 256 * 1024,
        }
        if s.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_context"] = ssl.create_default_context(cafile=s.ca_file or None)
        if s.security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = s.sasl_mechanism
            opts["sasl_plain_username"] = s.sasl_username
            opts["sasl_plain_password"] = s.sasl_password
        return opts

    async def connect(self) -> None:
        producer = AIOKafkaProducer(**self._options())
        try:
            async with asyncio.timeout(20):
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise SinkUnavailable(f"kafka {self.settings.bootstrap}: {exc!r}") from None
        self._producer = producer

    async def write(self, batch: Sequence[Outgoing]) -> list[Refused]:
        producer = self._producer
        if producer is None:
            raise SinkUnavailable("not connected")
        topic = self.settings.topic
        gateway = self.gateway
        futures = []
        try:
            for msg in batch:
                headers = [
                    ("node_id", msg.node_id.encode()),
                    ("boot", str(msg.boot).encode()),
                    ("seq", str(msg.seq).encode()),
                ]
                futures.append(
                    await producer.send(
                        topic, encode(gateway, msg), key=msg.node_id.encode(), headers=headers
                    )
                )
            async with asyncio.timeout(60):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except (KafkaError, TimeoutError) as exc:
            raise SinkUnavailable(f"kafka: {exc!r}") from None
        refused: list[Refused] = []
        for msg, result in zip(batch, results, strict=True):
            if isinstance(result, KafkaError):
                if getattr(result, "retriable", False) or _is_link_error(result):
                    raise SinkUnavailable(f"kafka: {result!r}")
                refused.append(Refused(msg, f"kafka refused the record: {result!r}"))
            elif isinstance(result, BaseException):
                raise SinkUnavailable(f"kafka: {result!r}")
        return refused

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await producer.stop()


def _is_link_error(exc: KafkaError) -> bool:
    name = type(exc).__name__
    return "Connection" in name or "Timeout" in name or "NodeNotReady" in name


register("kafka", KafkaSink)
