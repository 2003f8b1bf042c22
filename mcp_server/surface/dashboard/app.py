"""The dashboard's HTTP face: a static page and JSON endpoints, GET only (Starlette).

Mounted at `/dashboard` on the MCP server's HTTP transport (behind the same bearer token as /mcp)
and served alone by `autoresearch-fleet dashboard`. Nothing here can change anything: every route
answers GET (and HEAD); any other method gets 405. The page and its script ship in `static/` (no
CDN, no network)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_server.domain.errors import FleetError, NotFound
from mcp_server.surface.dashboard.data import DashboardData

PREFIX = "/dashboard"
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "app.css": "text/css; charset=utf-8"}
#: the page's static shell: no data in it, so it loads without the bearer token (see surface/http.py)
STATIC_PATHS = frozenset(f"{PREFIX}/static/{n}" for n in _STATIC)
_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


def _static(name: str) -> bytes:
    return resources.files("mcp_server.surface.dashboard").joinpath("static", name).read_bytes()


def _json(answer: Any) -> bytes:
    """Strict JSON (a NaN or infinity, which browsers cannot parse, becomes null)."""
    try:
        return json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(answer), separators=(",", ":"), allow_nan=False).encode()


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise FleetError(f"{name} must be an integer, got {raw[:32]!r}.") from None


def _opt(request: Request, name: str) -> str | None:
    v = request.query_params.get(name)
    return v[:64] if v else None


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def _host_ok(request: Request, allowed: frozenset[str] | None) -> bool:
    """On a loopback bind, only requests addressed to a loopback name (a page of another site that
    rebinds its DNS name to 127.0.0.1 sends its own name: refused)."""
    if allowed is None:
        return True
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in allowed


def routes(get_data: Callable[[], DashboardData | None], prefix: str = PREFIX,
           allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS) -> list[Route]:
    """The dashboard's routes under `prefix`. `get_data` returns the data source (None while the
    server is still starting: the endpoints then answer 503). `allowed_hosts`: the Host names
    accepted (loopback names by default; None for any, when a bearer token guards the server)."""

    def api(build: Callable[[DashboardData, Request], Any]) -> Callable[[Request], Response]:
        last: dict[str, tuple[Any, bytes]] = {}     # url -> (answer, its JSON): an unchanged answer is not re-encoded

        def endpoint(request: Request) -> Response:
            if not _host_ok(request, allowed_hosts):
                return JSONResponse({"error": "forbidden", "detail": "open the dashboard at http://127.0.0.1:<port>"
                                                                    "/dashboard (loopback only)"},
                                    status_code=403, headers=_HEADERS)
            data = get_data()
            if data is None:
                return JSONResponse({"error": "starting", "detail": "the engine is starting; retry in a moment"},
                                    status_code=503, headers=_HEADERS)
            try:
                answer = build(data, request)
                url = str(request.url)
                hit = last.get(url)
                if hit is None or hit[0] is not answer:
                    if len(last) > 128:
                        last.clear()
                    hit = last[url] = (answer, _json(answer))
                return Response(hit[1], media_type="application/json", headers=_HEADERS)
            except NotFound as exc:
                return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404, headers=_HEADERS)
            except FleetError as exc:
                return JSONResponse({"error": "invalid", "detail": str(exc)}, status_code=400, headers=_HEADERS)
        return endpoint

    def page(name: str) -> Callable[[Request], Response]:
        body = _static(name)

        def endpoint(request: Request) -> Response:
            return Response(body, media_type=_STATIC[name], headers=_HEADERS)
        return endpoint

    get = ["GET"]
    return [
        Route(prefix, page("index.html"), methods=get),
        Route(f"{prefix}/", page("index.html"), methods=get),
        *(Route(f"{prefix}/static/{n}", page(n), methods=get) for n in _STATIC),
        Route(f"{prefix}/api/version", api(lambda d, r: d.version()), methods=get),
        Route(f"{prefix}/api/overview", api(lambda d, r: d.overview()), methods=get),
        Route(f"{prefix}/api/experiments", api(lambda d, r: d.experiments(
            status=_opt(r, "status"), wave=_opt(r, "wave"), gpu=_opt(r, "gpu"), sort=r.query_params.get("sort", "seq"),
            order=r.query_params.get("order", "asc"), offset=_int(r, "offset", 0), limit=_int(r, "limit", 100))),
            methods=get),
        Route(f"{prefix}/api/board", api(lambda d, r: d.leaderboard(_opt(r, "gpu"), _int(r, "limit", 50))),
              methods=get),
        Route(f"{prefix}/api/progress", api(lambda d, r: d.progress()), methods=get),
        Route(f"{prefix}/api/waves", api(lambda d, r: d.waves()), methods=get),
        Route(f"{prefix}/api/waves/{{wave_id}}", api(lambda d, r: d.wave(r.path_params["wave_id"])), methods=get),
        Route(f"{prefix}/api/experiments/{{exp_id}}", api(lambda d, r: d.experiment(r.path_params["exp_id"])),
              methods=get),
        Route(f"{prefix}/api/experiments/{{exp_id}}/log", api(lambda d, r: d.log(
            r.path_params["exp_id"], _int(r, "offset", -8000), _int(r, "limit", 8000))), methods=get),
    ]


def standalone_app(data: DashboardData) -> Starlette:
    """The dashboard alone (the `dashboard` command): the page at / redirects to /dashboard."""
    from starlette.responses import RedirectResponse

    def root(request: Request) -> Response:
        return RedirectResponse(PREFIX)

    return Starlette(routes=[Route("/", root, methods=["GET"]), *routes(lambda: data)])
