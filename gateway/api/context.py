"""What the API's handlers share: settings, the read pool, the live hub, the running parts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from litestar.di import NamedDependency

from gateway.api.auth import Tokens
from gateway.api.cold import ColdReader
from gateway.api.live import LiveHub
from gateway.api.query import Source, SqliteSource
from gateway.api.rates import RateMeter
from gateway.api.reads import ReadPool
from gateway.api.tiered import TieredSource
from gateway.config import Settings
from gateway.ingest.service import Ingest
from gateway.rollup.hours import parquet_root
from gateway.store.writer import StoreWriter

__all__ = ["ApiContext", "Ctx"]


@dataclass(slots=True)
class ApiContext:
    """One API instance's state. ``writer``/``ingest`` are None when serving a store read-only.

    ``source`` reads hot SQLite and cold Parquet (``TieredSource``) unless ``tiered`` is False.
    """

    settings: Settings
    data_dir: Path
    pool: ReadPool
    tokens: Tokens
    hub: LiveHub
    rates: RateMeter = field(default_factory=RateMeter)
    source: Source = field(default_factory=SqliteSource)
    #: Replace ``source`` with hot and cold reads (``TieredSource``); False keeps the one given.
    tiered: bool = True
    writer: StoreWriter | None = None
    ingest: Ingest | None = None
    started: float = field(default_factory=time.time)
    cold: ColdReader = field(init=False)

    def __post_init__(self) -> None:
        self.cold = ColdReader(self.pool.path, parquet_root(self.data_dir))
        # The cold reader process goes with the pool whose threads use it.
        self.pool.on_close(self.cold.close)
        if self.tiered:
            r = self.settings.rollup
            self.source = TieredSource(
                self.cold, int(r.accept_past_days * 86_400_000), r.accept_future_s * 1000
            )


#: How handlers ask for the context: ``ctx: Ctx`` (injected by name).
Ctx = NamedDependency[ApiContext]
