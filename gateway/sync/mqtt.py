"""The ``mqtt`` sink: QoS1 publishes to a cloud broker, one per reading message.

Uses Roost's own MQTT 5 client (``gateway.mqtt``), because a refused message must be told apart
from a broken link: with MQTT 5 the broker answers each QoS1 PUBLISH with a reason code
(0x87 not authorized, 0x90 topic invalid, 0x95 too large, 0x99 payload invalid), and those
messages go to dead letters while the rest flows on. gmqtt reports no per-message outcome.

TLS verifies the broker's certificate against the system CAs (or ``ca_file``) unless
``tls_insecure``; ``cert_file``/``key_file`` add a client certificate. The gateway's own birth
(``{"state":"online"}``) and last will (``{"state":"offline"}``) go to ``status_topic``, retained.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence

import msgspec

from gateway.config import MqttSinkSettings, parse_mqtt_url
from gateway.mqtt import wire
from gateway.mqtt.client import Connection, ConnectOptions, MqttError, PublishRejected, tls_context
from gateway.sync.sink import Outgoing, Refused, SinkUnavailable, encode, register

__all__ = ["MqttSink"]

# Reason codes that mean "this message, never": everything else >= 0x80 is retried.
_PERMANENT = {0x87, 0x90, 0x95, 0x99, 0x83}


class MqttSink:
    """See the module docstring."""

    def __init__(self, settings: MqttSinkSettings, gateway: str) -> None:
        self.name = settings.name
        self.settings = settings
        self.gateway = gateway
        self.target = parse_mqtt_url(settings.url, f"sinks.{settings.name}.url")
        self._conn: Connection | None = None
        self._status_topic = settings.status_topic.format(gateway=gateway)

    async def connect(self) -> None:
        s = self.settings
        options = ConnectOptions(
            host=self.target.host,
            port=self.target.port,
            client_id=s.client_id or f"roost-{self.gateway}-{s.name}",
            clean_start=True,
            session_expiry=0,
            keepalive=30,
            username=self.target.username,
            password=self.target.password,
            will=wire.Will(self._status_topic, b'{"state":"offline"}', qos=1, retain=True),
            ssl=tls_context(
                s.ca_file, insecure=s.tls_insecure, cert_file=s.cert_file, key_file=s.key_file
            )
            if self.target.tls
            else None,
        )
        try:
            self._conn = await Connection.open(options)
            birth = msgspec.json.encode({"state": "online", "ts": int(time.time() * 1000)})
            await self._conn.publish(self._status_topic, birth, qos=1, retain=True)
        except (MqttError, OSError, ssl.SSLError) as exc:
            await self.close()
            raise SinkUnavailable(str(exc)) from None

    async def write(self, batch: Sequence[Outgoing]) -> list[Refused]:
        if self._conn is None or self._conn.closed:
            # The broker may close the link right after refusing a message: reconnect here
            # rather than count a failure against the next batch.
            await self.connect()
        conn = self._conn
        assert conn is not None
        template = self.settings.topic
        gateway = self.gateway
        window = asyncio.Semaphore(self.settings.window)
        refused: list[Refused] = []

        async def one(msg: Outgoing) -> None:
            async with window:
                topic = template.format(gateway=gateway, node_id=msg.node_id)
                try:
                    await conn.publish(topic, encode(gateway, msg), qos=1)
                except PublishRejected as exc:
                    if exc.reason not in _PERMANENT:
                        raise
                    refused.append(Refused(msg, str(exc)))

        results = await asyncio.gather(*(one(m) for m in batch), return_exceptions=True)
        for r in results:
            if isinstance(r, MqttError):
                raise SinkUnavailable(str(r))
            if isinstance(r, BaseException):
                raise r
        return refused

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(MqttError):
                await conn.publish(self._status_topic, b'{"state":"offline"}', qos=0, retain=True)
            await conn.close()


register("mqtt", MqttSink)
