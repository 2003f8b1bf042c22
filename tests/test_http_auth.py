"""HTTP transport security: loopback by default; a non-loopback bind without a bearer token is
refused; with a token, requests without it or with a wrong one get 401 and the right one works.
The non-loopback case binds 0.0.0.0 and connects through 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_harness import REPO, free_port, http_server, ok, serve_args

from mcp_server.surface.http import InsecureBind, check_bind, is_loopback

TOKEN = "s3cret-token-for-tests-0123456789"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.7", False), ("example.com", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(InsecureBind, match="token"):
            check_bind(host, None)
        check_bind(host, TOKEN)


def test_short_token_refused():
    with pytest.raises(InsecureBind, match="at least"):
        check_bind("0.0.0.0", "short")


@pytest.mark.parametrize("env_token", [None, ""])
def test_serve_refuses_non_loopback_without_token(tmp_path, cache, env_token):
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_FLEET_TOKEN"}
    if env_token is not None:
        env["AUTORESEARCH_FLEET_TOKEN"] = env_token
    args = serve_args(tmp_path / "ws", cache, extra=["--transport", "http", "--host", "0.0.0.0",
                                                              "--port", str(free_port())])
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to bind 0.0.0.0" in proc.stderr and "--token" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "ws").exists()  # refused before anything was created


@pytest.mark.anyio
async def test_token_required_on_every_request(tmp_path, cache):
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    args = serve_args(tmp_path / "ws", cache, extra=["--transport", "http", "--host", "0.0.0.0",
                                                              "--port", str(port)])
    async with http_server(args, tmp_path / "server.log", port, env={"AUTORESEARCH_FLEET_TOKEN": TOKEN}):
        async with httpx.AsyncClient(timeout=30) as http:
            for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token-000"},
                            {"authorization": TOKEN}, {"authorization": f"Basic {TOKEN}"},
                            {"authorization": f"Bearer {TOKEN}x"}, {"authorization": f"bearer {TOKEN[:-1]}"}):
                r = await http.post(url, json=INIT, headers={**HEADERS, **headers})
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "Authorization: Bearer" in r.json()["detail"]
            r = await http.get(f"http://127.0.0.1:{port}/anything-else")
            assert r.status_code == 401
            r = await http.post(url, json=INIT, headers={**HEADERS, "authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200

        # the real client with the token works end to end
        http_client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"},
                                         timeout=httpx2.Timeout(30, read=300))
        async with http_client, Client(streamable_http_client(url, http_client=http_client)) as client:
            tools = await client.list_tools()
            assert len(tools.tools) == 18
            clusters = await ok(client, "list_clusters")
            assert clusters["total"] == 2

        # and the real client without it is turned away
        with pytest.raises(BaseException) as info:
            async with Client(url) as client:
                await client.list_tools()
        assert any(isinstance(e, MCPError) for e in _leaves(info.value))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]
