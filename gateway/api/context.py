"""What the API's handlers share: settings, the read pool, the live hub, the running parts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from litestar.di import NamedDependency

from gateway.api.auth import Tokens
from gateway.api.live import LiveHub
from gateway.api.query import Source, SqliteSource
from gateway.api.rates import RateMeter
from gateway.api.reads import ReadPool
from gateway.config import Settings
from gateway.ingest.service import Ingest
from gateway.store.writer import StoreWriter

__all__ = ["ApiContext", "Ctx"]


@dataclass(slots=True)
class ApiContext:
    """One API instance's state. ``writer``/``ingest`` are None when serving a store read-only."""

    settings: Settings
    data_dir: Path
    pool: ReadPool
    tokens: Tokens
    hub: LiveHub
    rates: RateMeter = field(default_factory=RateMeter)
    source: Source = field(default_factory=SqliteSource)
    writer: StoreWriter | None = None
    ingest: Ingest | None = None
    started: float = field(default_factory=time.time)


#: How handlers ask for the context: ``ctx: Ctx`` (injected by name).
Ctx = NamedDependency[ApiContext]
