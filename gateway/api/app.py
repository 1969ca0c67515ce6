"""The Litestar app: routes, JSON errors, OpenAPI with offline assets, the dashboard's files.

The dashboard is built from ``web/`` into ``gateway/api/static`` (setup.sh runs the build), so a
wheel carries it and the gateway serves it with no Node.js and no internet. The OpenAPI pages
(Swagger UI at ``/schema/swagger``, the default at ``/schema``) load their JavaScript from the same
folder instead of a CDN.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from gateway.api import routes, stream
from gateway.api.cold import ColdReadError
from gateway.api.context import ApiContext

__all__ = ["STATIC", "create_app"]

log = logging.getLogger("roost.api")

STATIC = Path(__file__).resolve().parent / "static"

_NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Roost</title>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>Roost</h1><p>The dashboard is not built in this installation. Run <code>./setup.sh</code>
(it builds <code>web/</code> with npm), or use the API:
<a href="/schema/swagger">/schema/swagger</a>, <a href="/api/nodes">/api/nodes</a>,
<a href="/metrics">/metrics</a>.</p></body>"""


@get("/", include_in_schema=False, media_type=MediaType.HTML)
async def index() -> Response[bytes]:
    page = STATIC / "index.html"
    body = page.read_bytes() if page.is_file() else _NOT_BUILT.encode()
    return Response(body, media_type=MediaType.HTML, headers={"Cache-Control": "no-cache"})


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """400 whose detail starts with the parameter's name (Litestar's names it in ``extra``)."""
    detail = exc.detail
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict) and "key" in extra[0]:
        first = extra[0]
        detail = f"{first['key']}: {first.get('message', 'invalid')}"
        extra = {"parameter": first["key"], "errors": exc.extra}
    return Response({"status_code": 400, "detail": detail, "extra": extra}, status_code=400)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _cold_error(_: Request[Any, Any, Any], exc: ColdReadError) -> Response[Any]:
    # Cold hours could not be read (the reader logged why): the query is incomplete, so no 200.
    return Response({"status_code": 503, "detail": f"cold data: {exc}"}, status_code=503)


def _server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return Response(
        {"status_code": 500, "detail": f"internal error: {type(exc).__name__}"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


def _openapi() -> OpenAPIConfig:
    vendor = "/assets/vendor/swagger"
    swagger = SwaggerRenderPlugin(
        js_url=f"{vendor}/swagger-ui-bundle.js",
        css_url=f"{vendor}/swagger-ui.css",
        standalone_preset_js_url=f"{vendor}/swagger-ui-standalone-preset.js",
        path="/swagger",
        favicon="<link rel='icon' href='/assets/favicon.svg'>",
    )
    return OpenAPIConfig(
        title="Roost gateway API",
        version="1",
        description="REST API of a Roost gateway. The live WebSocket /ws/live is described in "
        "docs/api.md (WebSocket routes are not part of OpenAPI).",
        path="/schema",
        render_plugins=[swagger],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", description="admin token")
            }
        ),
    )


def create_app(ctx: ApiContext) -> Litestar:
    """The app for one gateway (or one read-only store)."""

    def provide_ctx() -> ApiContext:
        return ctx

    handlers: list[Any] = [index, *routes.ROUTES, *stream.ROUTES]
    if STATIC.is_dir():
        handlers.append(
            create_static_files_router(path="/assets", directories=[STATIC], name="assets")
        )
    return Litestar(
        route_handlers=handlers,
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False, use_cache=True)},
        state=State({"tokens": ctx.tokens}),
        openapi_config=_openapi(),
        exception_handlers={
            ValidationException: _validation_error,
            HTTPException: _http_error,
            ColdReadError: _cold_error,
            Exception: _server_error,
        },
        # The gateway configures logging itself; unexpected errors are logged by _server_error.
        logging_config=LoggingConfig(configure_root_logger=False, log_exceptions="never"),
        debug=False,
    )
