"""Streamable HTTP transport with a bearer token.

Binds 127.0.0.1 by default. Binding any other address exposes the server (it can launch training
runs and tear down clusters), so it REQUIRES a token (--token or AUTORESEARCH_FLEET_TOKEN); without
one the server refuses to start. When a token is set, every HTTP request must carry
`Authorization: Bearer <token>` or it gets 401 (compared in constant time).

The read-only dashboard is served at /dashboard beside /mcp, behind the same token: its data (every
/dashboard/api/ endpoint) needs it like /mcp does. Only the page's own static shell (the HTML, script
and stylesheet, which carry no data) loads without it, so a browser can open the page and send the
token it is given with every data request."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

from mcp.server.mcpserver import MCPServer

log = logging.getLogger("autoresearch_fleet.http")

TOKEN_ENV = "AUTORESEARCH_FLEET_TOKEN"
MCP_PATH = "/mcp"
MIN_TOKEN_LEN = 16


class InsecureBind(SystemExit):
    """Refusal to expose the server beyond loopback without a token."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything, so treat it as exposed


def check_bind(host: str, token: str | None) -> None:
    """Raise InsecureBind (exit code 2, with the reason) for a non-loopback bind without a token."""
    if token is not None and len(token) < MIN_TOKEN_LEN:
        raise InsecureBind(
            f"refusing to start: the bearer token is {len(token)} characters; use at least {MIN_TOKEN_LEN} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
        )
    if not is_loopback(host) and not token:
        raise InsecureBind(
            f"refusing to bind {host}: that exposes the server beyond this machine. Set a bearer token with "
            f"--token or {TOKEN_ENV} (clients then send 'Authorization: Bearer <token>'), or bind 127.0.0.1."
        )


class BearerAuth:
    """ASGI middleware: 401 for any HTTP request without the right bearer token. Lifespan passes."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or _public(scope):
            await self.app(scope, receive, send)
            return
        got = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                got = value
                break
        if not hmac.compare_digest(got, self._expected):
            await _unauthorized(send, "missing bearer token" if not got else "wrong bearer token")
            return
        await self.app(scope, receive, send)


def _public(scope: dict[str, Any]) -> bool:
    """The dashboard's static shell (no data in it) loads without the token; GET only."""
    from mcp_server.surface.dashboard import PREFIX
    from mcp_server.surface.dashboard.app import STATIC_PATHS

    return scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and (
        scope.get("path") in (PREFIX, f"{PREFIX}/") or scope.get("path") in STATIC_PATHS)


async def _unauthorized(send: Any, reason: str) -> None:
    body = json.dumps({"error": "unauthorized", "detail": f"{reason}: send 'Authorization: Bearer <token>'."}).encode()
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="autoresearch"'),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def build_app(server: MCPServer, host: str, token: str | None) -> Any:
    """The ASGI app: the SDK's streamable HTTP app at /mcp and the read-only dashboard at /dashboard
    (over the server's engine once it has started), behind BearerAuth when a token is set."""
    from mcp_server.surface import dashboard

    check_bind(host, token)
    get_data = dashboard.engine_data(lambda: getattr(server, "engine", None))
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    # loopback without a token: only requests addressed to a loopback name (DNS rebinding); with a
    # token, the token guards it
    app.router.routes.extend(dashboard.routes(get_data, allowed_hosts=None if token else dashboard.LOOPBACK_HOSTS))
    return BearerAuth(app, token) if token else app


def serve(server: MCPServer, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          log_level: str = "warning") -> None:
    import uvicorn

    app = build_app(server, host, token)
    log.info("serving MCP over streamable HTTP at http://%s:%d%s, dashboard at %s (auth: %s)", host, port, MCP_PATH,
             "/dashboard", "bearer token" if token else "none, loopback only")
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
