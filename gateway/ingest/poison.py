"""The poison-message breaker: a message that kills the gateway does it at most N times.

Decode and the store writer turn every exception into a quarantine reason, but some deaths no
handler sees: a segfault in a C extension, the kernel's OOM killer, a watchdog. The broker then
hands the same unacknowledged message to the next run, which dies the same way: a crash loop
that one publish by any client can start.

The breaker works without a write per message on the hot path. A run marks itself running in
the store and clears the mark at a clean stop, so a run that finds the mark set knows its
predecessor died. Only then, and only for what the broker redelivers (``dup`` set: the dead run
had received it without acknowledging it), ingest goes carefully: one message at a time, each
first charged one death in the store (durably, before it is touched), committed, then cleared.
A message the previous run died on is charged again on every death; once its count reaches
``ingest.poison_after`` it is quarantined unprocessed. The first death is inferred from the
redelivery itself, so ``poison_after = 3`` ends a crash loop after three deaths. It is only
inferred, though: every message in flight at that death is a suspect, so the setting is at
least 2 and a message is quarantined only after killing a run that handled it alone.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial

from gateway.model import Rejected
from gateway.store import poison as store_poison
from gateway.store.writer import StoreWriter

__all__ = ["PoisonGuard", "fingerprint"]

log = logging.getLogger("roost.ingest")


def fingerprint(topic: str, payload: bytes) -> bytes:
    """The identity of a delivered message: what the broker redelivers is the same bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(topic.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(payload)
    return h.digest()


class PoisonGuard:
    """Durable death counts of the messages in flight when a run died (see the module doc)."""

    def __init__(self, writer: StoreWriter, poison_after: int) -> None:
        self.writer = writer
        self.poison_after = poison_after
        #: The previous run died: handle redeliveries one at a time until the first new message.
        self.careful = False
        #: Messages quarantined unprocessed by the breaker.
        self.quarantined = 0

    async def begin(self) -> None:
        """At the start of a run: was the previous one cut off?"""
        self.careful = await self.writer.execute(store_poison.begin_run)
        if self.careful:
            log.warning(
                "the previous gateway run did not stop cleanly: redelivered messages are "
                "handled one at a time (ingest.poison_after = %d)", self.poison_after,
            )

    def done_careful(self) -> None:
        """The redelivered backlog is over (a first new message, or the link dropped)."""
        self.careful = False

    async def charge(self, topic: str, payload: bytes) -> tuple[bytes, Rejected | None]:
        """Count a death against this redelivered message before it is handled.

        Returns its fingerprint and, when it has now killed ``poison_after`` runs, the
        quarantine record to store instead of handling it.
        """
        fp = fingerprint(topic, payload)
        deaths = await self.writer.execute(
            partial(store_poison.charge, fp=fp, topic=topic, size=len(payload))
        )
        if deaths < self.poison_after:
            return fp, None
        self.quarantined += 1
        log.error(
            "a message on %s (%d bytes) was being handled each time the gateway died, %d times: "
            "quarantined unprocessed (ingest.poison_after = %d)",
            topic[:200], len(payload), deaths, self.poison_after,
        )
        reason = f"poison: the gateway died {deaths} times while handling this message"
        return fp, Rejected(topic, payload, reason)

    async def handled(self, fp: bytes) -> None:
        """The message committed (stored or quarantined): its count is no longer needed."""
        await self.writer.execute(partial(store_poison.clear, fp=fp))

    async def end(self) -> None:
        """A clean stop: the next run is not suspicious."""
        await self.writer.execute(store_poison.end_run)
