"""Tokens: the admin token (changing things) and optional read auth (reading things).

The admin token is ``api.admin_token`` when set, else the one in ``<data_dir>/admin_token``,
generated on first run (mode 0600) and logged once. Requests carry it as
``Authorization: Bearer <token>``; where a browser cannot set headers (a WebSocket, a download
link) reading endpoints also take ``?token=``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from gateway.config import ApiSettings

__all__ = ["Tokens", "admin_guard", "load_admin_token", "read_guard"]

log = logging.getLogger("roost.api")

TOKEN_FILE = "admin_token"


def load_admin_token(settings: ApiSettings, data_dir: Path) -> str:
    """The configured token, the stored one, or a new one (stored and logged once)."""
    if settings.admin_token:
        return settings.admin_token
    path = data_dir / TOKEN_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.warning("admin token generated (shown once, kept in %s): %s", path, token)
    return token


class Tokens:
    """Who may do what: compared in constant time."""

    def __init__(self, admin: str, read: str = "", read_auth: bool = False) -> None:
        self._admin = admin.encode()
        self._read = read.encode()
        self.read_auth = read_auth

    def is_admin(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._admin)

    def may_read(self, token: str | None) -> bool:
        if not self.read_auth or self.is_admin(token):
            return True
        return (
            bool(self._read)
            and token is not None
            and hmac.compare_digest(token.encode(), self._read)
        )


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _tokens(connection: ASGIConnection[Any, Any, Any, Any]) -> Tokens:
    tokens: Tokens = connection.app.state["tokens"]
    return tokens


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Only the admin token, and only in the Authorization header."""
    if not _tokens(connection).is_admin(_bearer(connection)):
        raise NotAuthorizedException(
            detail="this needs the admin token: Authorization: Bearer <token> (see docs/api.md)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def read_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Open unless ``api.read_auth``; then a read or admin token, as header or ``?token=``."""
    tokens = _tokens(connection)
    if not tokens.read_auth:
        return
    token = _bearer(connection) or connection.query_params.get("token")
    if not tokens.may_read(token):
        raise NotAuthorizedException(
            detail="read auth is on: send Authorization: Bearer <token> or ?token=<token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
