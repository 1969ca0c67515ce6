"""A token bucket that protects metered links: readings per second and bytes per second."""

from __future__ import annotations

import asyncio
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``await take(n)`` returns once ``n`` tokens were available; ``rate`` 0 means no limit.

    Taking more than is available goes into debt and sleeps it off, so a batch larger than the
    burst still passes, at the configured average rate.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    async def take(self, n: float) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)
