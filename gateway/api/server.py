"""The API server: uvicorn serving the Litestar app inside the gateway's own event loop.

One process, one loop: handlers see the store writer and ingest directly, and the live hub is a
plain commit listener. The gateway owns signals, so uvicorn's own signal capture is switched off.

The API is not on the data path: when its port cannot be bound (taken by another program) the
error is logged and binding is retried every few seconds while ingest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from pathlib import Path

import uvicorn

from gateway.api.app import create_app
from gateway.api.auth import Tokens, load_admin_token
from gateway.api.context import ApiContext
from gateway.api.live import LiveHub
from gateway.api.reads import ReadPool
from gateway.config import Settings
from gateway.ingest.service import Ingest
from gateway.store.reader import db_path
from gateway.store.writer import StoreWriter

__all__ = ["ApiServer"]

log = logging.getLogger("roost.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The gateway handles SIGINT/SIGTERM and stops us through ``should_exit``.
        yield


class ApiServer:
    """``await serve()`` runs until ``stop()``; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        data_dir: Path,
        writer: StoreWriter | None = None,
        ingest: Ingest | None = None,
    ) -> None:
        api = settings.api
        self.settings = settings
        self.tokens = Tokens(load_admin_token(api, data_dir), api.read_token, api.read_auth)
        self.ctx = ApiContext(
            settings=settings,
            data_dir=data_dir,
            pool=ReadPool(db_path(data_dir)),
            tokens=self.tokens,
            hub=LiveHub(api.ws_queue, api.ws_slow_policy),
            writer=writer,
            ingest=ingest,
        )
        if writer is not None:
            writer.add_listener(self.ctx.hub.publish)
            writer.add_listener(self.ctx.rates.record)
        self.app = create_app(self.ctx)
        self._server: _Server | None = None
        self._stopping = False
        self.bound = asyncio.Event()

    def _socket(self) -> socket.socket:
        host, port = self.settings.http.host, self.settings.http.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def serve(self) -> None:
        """The API task."""
        http = self.settings.http
        delay = 2.0
        while not self._stopping:
            try:
                sock = self._socket()
            except OSError as exc:
                log.error(
                    "API cannot listen on %s:%d (%s); retrying in %.0fs",
                    http.host, http.port, exc.strerror or exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            config = uvicorn.Config(
                self.app,
                log_config=None,
                access_log=False,
                lifespan="on",
                ws="websockets-sansio",
                timeout_graceful_shutdown=3,
                server_header=False,
            )
            self._server = _Server(config)
            log.info("API and dashboard on http://%s:%d/", http.host, http.port)
            self.bound.set()
            try:
                await self._server.serve(sockets=[sock])
            except (Exception, SystemExit) as exc:  # uvicorn exits on a failed start-up
                log.error("API server failed: %r", exc)
            finally:
                sock.close()
            if not self._stopping:
                log.error("API server stopped unexpectedly; restarting in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        """End live feeds, let in-flight requests finish (3 s at most), release the threads."""
        self._stopping = True
        self.ctx.hub.close()
        if self._server is not None:
            self._server.should_exit = True

    def close(self) -> None:
        self.ctx.pool.close()
