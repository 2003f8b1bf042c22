"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) during a real
CPU session through the MCP server over HTTP: it shows the running experiments, a finished one
appears within 5 s, a click shows its log and verdict, the charts render, and nothing on it ranks a
result against one of another GPU type. Also: the bearer token off loopback, the standalone
`autoresearch-fleet dashboard` (read-only, follows another process's writes), and the endpoints'
answers for bad input.

Set UPDATE_SCREENSHOTS=1 to write the screenshot to docs/dashboard.png (it is always written to the
test's tmp dir)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_harness import (
    REPO,
    free_port,
    http_server,
    ledger_dump,
    ledger_experiments,
    ok,
    seed_ledger,
    serve_args,
    wait_until_answers,
)

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.models import Decision, Status
from mcp_server.domain.tool_names import Tool
from mcp_server.engine.facade import Engine
from mcp_server.store.ledger import Ledger

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TOKEN = "dashboard-token-for-tests-0123456789"
APPEAR_S = 5.0

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (the browser tests)")
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} "
                                    "(apt-get install chromium)")


async def _browser(pw):
    return await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])


def _wait_ledger(workspace: Path, pred, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exps = ledger_experiments(workspace)
        hit = pred(exps)
        if hit:
            return hit
        time.sleep(0.05)
    raise AssertionError(f"the ledger did not reach the state in {timeout_s}s")


@needs_chromium
@pytest.mark.anyio
async def test_dashboard_follows_a_live_session(tmp_path, cache):
    ws = tmp_path / "ws"
    port = free_port()
    args = serve_args(ws, cache, budget=4.0, extra=["--transport", "http", "--port", str(port),
                                                     "--simulate-tiers", "H100,H200"])
    base = f"http://127.0.0.1:{port}"
    async with http_server(args, tmp_path / "server.log", port):
        http_client = httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300))
        async with http_client, Client(streamable_http_client(f"{base}/mcp", http_client=http_client)) as client, \
                playwright_api.async_playwright() as pw:
            browser = await _browser(pw)
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/dashboard")
            await page.wait_for_selector("#ov-cards .card")

            # a baseline on each simulated GPU type (2 seeds each) and a variant on H100
            for gpu in ("H100", "H200"):
                await ok(client, f"{Tool.LAUNCH_EXPERIMENT}", {"description": f"baseline {gpu}", "replicates": 2,
                                                              "gpu_type": gpu})
            await ok(client, f"{Tool.LAUNCH_EXPERIMENT}", {"description": "deeper", "overrides": {"DEPTH": 3},
                                                          "gpu_type": "H100"})

            # the running experiments show
            await page.wait_for_selector('#exp-table tr[data-status="running"]', timeout=120_000)
            running = await page.locator('#exp-table tr[data-status="running"]').count()
            assert running >= 1
            assert int(await page.locator("#c-running b").inner_text()) >= 1

            # the first to finish appears within 5 s of its result reaching the ledger
            first = _wait_ledger(ws, lambda ex: next((e for e in ex.values() if e.status == Status.done), None))
            seen_at = time.monotonic()
            await page.wait_for_selector(f'#exp-table tr[data-id="{first.id}"][data-status="done"]',
                                         timeout=APPEAR_S * 1000)
            assert time.monotonic() - seen_at < APPEAR_S

            # a click shows its log and its verdict
            await page.click(f'#exp-table tr[data-id="{first.id}"]')
            await page.wait_for_function(
                "() => document.querySelector('#d-log').textContent.includes('val_bpb')", timeout=10_000)
            verdict = await page.locator("#d-verdict").inner_text()
            label = verdict.removeprefix("verdict: ").split(" ")[0]
            assert label in {"improvement", "within_noise", "worse", "reference", "no_reference"}, verdict
            assert first.id in await page.locator("#d-title").inner_text()
            assert await page.locator("#d-events tr").count() >= 3   # queued, submitted, ..., finished

            # the whole session finishes; the page follows (no reload)
            await ok(client, f"{Tool.WAIT_FOR_EXPERIMENTS}", {"timeout_s": 600})
            exps = ledger_experiments(ws)
            assert all(e.status == Status.done for e in exps.values()), {e.id: e.status for e in exps.values()}
            await page.wait_for_function(f"() => document.querySelector('#c-done b').textContent === '{len(exps)}'",
                                         timeout=APPEAR_S * 1000)

            # keep the variant: the kept chain and the chart's star follow
            await ok(client, f"{Tool.KEEP_EXPERIMENT}", {"experiment_id": "e0005",
                                                               "reason": "the dashboard test keeps it"})
            await page.wait_for_selector('#ov-chain a[data-id="e0005"]', timeout=APPEAR_S * 1000)

            # one chart per GPU type, each drawn (not blank)
            gpus = sorted(await page.locator("canvas.chart-canvas").evaluate_all(
                "cs => cs.map(c => c.dataset.gpu)"))
            assert gpus == ["H100", "H200"]
            inked = await page.locator("canvas.chart-canvas").evaluate_all("""cs => cs.map(c => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) n++;
                return n; })""")
            assert all(n > 500 for n in inked), inked

            # nothing compares across GPU types: one leaderboard per type, each listing only its own runs,
            # and the verdict's reference ran on the same type
            boards = await page.locator("table.board").evaluate_all(
                "ts => ts.map(t => [t.dataset.gpu, [...t.querySelectorAll('a.exlink')].map(a => a.dataset.id)])")
            assert sorted(g for g, _ in boards) == ["H100", "H200"]
            for gpu, ids in boards:
                assert ids and all(exps[i].ran_on_gpu == gpu for i in ids), (gpu, ids)
            await page.click('#exp-table tr[data-id="e0005"]')
            await page.wait_for_function("() => document.querySelector('#d-title').textContent.startsWith('e0005')")
            text = await page.locator("#d-verdict").inner_text()
            ref = text.split(" vs ")[1].split(" ")[0]
            assert exps[ref].ran_on_gpu == exps["e0005"].ran_on_gpu == "H100"
            assert "DEPTH" in await page.locator("#d-body").inner_text()      # its code change against the parent

            # filter by status and by wave
            rows = "() => document.querySelectorAll('#exp-table tbody tr').length"
            await page.select_option("#f-status", "done")
            await page.wait_for_function(f"{rows} === {len(exps)}")
            await page.select_option("#f-wave", "w0001")
            await page.wait_for_function(f"{rows} === 2")
            shown = await page.locator("#exp-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)")
            assert sorted(shown) == sorted(e.id for e in exps.values() if e.wave_id == "w0001")
            await page.select_option("#f-wave", "")
            # a wave: its design and its cells (mean over seeds, per GPU type)
            await page.click('#wave-table tr[data-wave="w0001"]')
            await page.wait_for_selector("#wave-cells tbody tr")
            cells = await page.locator("#wave-cells tbody tr td:first-child").all_inner_texts()
            assert cells == [exps["e0001"].ran_on_gpu]                  # one cell: the baseline's 2 seeds
            assert "replicates" in await page.locator("#wave-detail").inner_text()
            # sortable: by the metric, best first
            await page.click('#exp-table th[data-key="value"]')
            await page.wait_for_selector('#exp-table th.asc[data-key="value"]')

            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            if os.environ.get("UPDATE_SCREENSHOTS"):
                shutil.copy(shot, REPO / "docs" / "dashboard.png")
            assert errors == [], errors
            await browser.close()


@needs_chromium
@pytest.mark.anyio
async def test_dashboard_off_loopback_needs_the_token(tmp_path, cache):
    port = free_port()
    args = serve_args(tmp_path / "ws", cache, extra=["--transport", "http", "--host", "0.0.0.0", "--port", str(port)])
    base = f"http://127.0.0.1:{port}/dashboard"
    async with http_server(args, tmp_path / "server.log", port, env={"AUTORESEARCH_FLEET_TOKEN": TOKEN}):
        async with httpx.AsyncClient(timeout=30) as http:
            for path in ("/api/overview", "/api/experiments", "/api/version", "/api/progress",
                         "/api/experiments/e0001/log"):
                r = await http.get(base + path)
                assert r.status_code == 401, path
                r = await http.get(base + path, headers={"authorization": "Bearer wrong-token-wrong-token-00"})
                assert r.status_code == 401, path
            r = await http.get(base + "/api/overview", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["counts"]["total"] == 0
            # the page's shell (no data in it) loads, so the browser can ask for the token
            shell = await http.get(base)
            assert shell.status_code == 200 and "autoresearch fleet" in shell.text
            r = await http.post(base + "/api/overview", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 405
        async with playwright_api.async_playwright() as pw:
            browser = await _browser(pw)
            page = await browser.new_page()
            await page.goto(base)
            await page.wait_for_selector("#auth:not([hidden])")
            assert await page.locator("#ov-cards .card").count() == 0
            await page.fill("#token", TOKEN)
            await page.click("#token-go")
            await page.wait_for_selector("#ov-cards .card", timeout=10_000)
            assert await page.locator("#auth").is_hidden()
            await browser.close()


def test_standalone_dashboard_reads_another_process_ledger(tmp_path):
    """`autoresearch-fleet dashboard` on a workspace another process writes: it takes no lock, changes
    nothing, and shows a write within 5 s."""
    ws = tmp_path / "ws"
    seed_ledger(ws, 120, random.Random(3))
    before = ledger_dump(ws)
    # an engine holds the workspace lock, as a server running the session does
    engine = Engine(FleetConfig(workspace=ws, tag="bench", profile="cpu", cpu_slots=2))
    engine.start()
    before = ledger_dump(ws)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mcp_server.cli", "dashboard", "--workspace", str(ws),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/dashboard/api"
    try:
        assert wait_until_answers(base + "/version", proc), proc.stderr.read() if proc.stderr else ""
        with httpx.Client(base_url=base, timeout=30) as http:
            o = http.get("/overview").json()
            assert o["counts"]["total"] == 120 and o["kept_chain"] == []
            for path in ("/experiments?sort=value", "/experiments?status=failed", "/experiments?wave=w0001",
                         "/board", "/progress", "/waves", "/waves/w0001", "/experiments/e0001",
                         "/experiments/e0001/log?offset=0&limit=100"):
                assert http.get(path).status_code == 200, path
            board = http.get("/board").json()
            assert set(board["by_gpu_type"]) == {"CPU", "H100", "H200"}
            assert any("never compared" in n for n in board["notes"])
            by_value = http.get("/experiments?sort=value&status=done&limit=1000").json()["rows"]
            values = [r["value"] for r in by_value]
            assert values == sorted(values) and len(values) > 50          # lower is better: best first
            failed = http.get("/experiments?status=failed").json()
            assert failed["total"] > 0 and all(r["status"] in {"crash", "oom", "nan"} for r in failed["rows"])
            # bad input: a clear error, 4xx
            assert http.get("/experiments/nope").status_code == 404
            assert "sort must be one of" in http.get("/experiments?sort=bogus").json()["detail"]
            assert http.get("/experiments?limit=x").status_code == 400
            assert http.get("/waves/w9999").status_code == 404
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                assert http.request(method, "/overview").status_code == 405
            # a page of another site rebinding its name to 127.0.0.1 is refused
            assert http.get("/overview", headers={"host": f"evil.example:{port}"}).status_code == 403
            assert http.get("/overview", headers={"host": f"localhost:{port}"}).status_code == 200
            assert ledger_dump(ws) == before                           # it changed nothing

            # another process keeps an experiment: the dashboard shows it within 5 s
            done = next(r["id"] for r in by_value)
            writer = Ledger(ws / ".autoresearch" / "ledger.db")
            try:
                assert writer.set_decision(done, Decision.keep, "test")
            finally:
                writer.close()
            t = time.monotonic()
            while time.monotonic() - t < APPEAR_S:
                if [k["id"] for k in http.get("/overview").json()["kept_chain"]] == [done]:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the kept experiment did not show within 5 s")
            assert http.get(f"/experiments/{done}").json()["experiment"]["decision"] == "keep"
    finally:
        proc.terminate()
        proc.wait(20)
        engine.close()


def test_dashboard_refuses_a_workspace_without_a_session(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mcp_server.cli", "dashboard", "--workspace", str(tmp_path / "none")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "No research session" in proc.stderr


def test_the_page_ships_in_the_package():
    """Every file of the page is package data (a wheel carries it: no CDN, no network)."""
    import tomllib

    shipped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = shipped["mcp_server.surface.dashboard"]
    static = REPO / "mcp_server" / "surface" / "dashboard" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir())
    assert files and all(any(Path(f).match(g) for g in globs) for f in files), (files, globs)
    page = (static / "index.html").read_text() + (static / "app.js").read_text()
    assert "http://" not in page and "https://" not in page          # nothing loaded from elsewhere
    assert "POST" not in page and "innerHTML" not in page     # GET only; text is never parsed as HTML


def test_a_factorial_waves_main_effects_are_the_wave_analysis():
    """The wave detail's main-effects table is domain/wave_analysis's answer (the analyze_wave
    statistics), not a second computation; other kinds of wave have none."""
    from test_wave_analysis import build_wave, known_values

    from mcp_server.domain.metric import DEFAULT_METRIC
    from mcp_server.domain.wave_analysis import analyze_wave, pooled_noise
    from mcp_server.surface.dashboard.data import main_effects

    wave, exps = build_wave(known_values(), control=[1.0, 1.003, 0.998])
    got = main_effects(wave, exps, DEFAULT_METRIC, exps)
    want = analyze_wave(wave, exps, DEFAULT_METRIC, pooled_noise(exps, DEFAULT_METRIC)).model_dump(mode="json")
    assert got == want
    assert {a["axis"] for a in got["by_gpu_type"]["H100"]["axes"]} == {"A", "B", "C"}
    assert main_effects(wave.model_copy(update={"kind": "replicates"}), exps, DEFAULT_METRIC, exps) is None
    no_axes = wave.model_copy(update={"design": {}})
    assert "no axes" in main_effects(no_axes, exps, DEFAULT_METRIC, exps)["error"]


# -- following the ledger: answers never stick at a stale state ------------------------------------------

def _running_ledger(tmp_path: Path) -> Ledger:
    from mcp_server.domain.models import Experiment

    ledger = Ledger(tmp_path / "ledger.db")
    ledger.insert_launch([Experiment(id="e0001", description="exp 1", commit="1" * 40, code_hash="1" * 40,
                                     harness_hash="h" * 64, seed=42, created_at=1000.0)])
    assert ledger.begin_attempt("e0001", 1, "local", "CPU", 1, None, str(tmp_path / "e0001"))
    return ledger


def _settled_statuses(data) -> list[str]:
    """The statuses the experiments panel shows once the server says its answers have settled."""
    deadline = time.monotonic() + 30
    while True:
        data.experiments()                  # after a change, the first request starts the rebuild
        if data.version()["settled"]:
            return [r["status"] for r in data.experiments()["rows"]]
        assert time.monotonic() < deadline, "the dashboard's answers never settled"
        time.sleep(0.05)


def test_an_answer_built_between_a_commit_and_the_cache_refresh_does_not_stick(tmp_path):
    """Inside the server the answers are built from the engine's experiment cache, which the writer
    refreshes just after its COMMIT. A request in between reads the new ledger position with the old
    cache; its answer must not be served as current once the cache has caught up (once it was,
    until the next change). The request is made inside that window on purpose: from a change
    listener that runs before the cache's own."""
    from mcp_server.domain.metric import DEFAULT_METRIC
    from mcp_server.engine.experiment_cache import ExperimentCache
    from mcp_server.surface.dashboard.data import DashboardData

    ledger = _running_ledger(tmp_path)
    in_window: list[list[str]] = []
    ledger.subscribe(lambda ids: in_window.append([r["status"] for r in data.experiments()["rows"]]))
    cache = ExperimentCache(ledger, DEFAULT_METRIC)        # subscribed after: refreshed after the listener
    data = DashboardData(ledger, tmp_path, cache=cache)
    try:
        assert _settled_statuses(data) == ["running"]
        assert ledger.finish_attempt("e0001", 1, Status.crash, error="boom")
        assert in_window == [["running"]], "the request did not land between the commit and the refresh"
        assert _settled_statuses(data) == ["crash"]
    finally:
        cache.unsubscribe()
        ledger.close()


def test_a_change_during_a_background_rebuild_is_rebuilt_too(tmp_path):
    """After a change, a request gets the previous answer while a background rebuild computes the new
    one. If the ledger moves again during that rebuild, the answer must end at the newest state, and
    `settled` must not say True before (once the later request was dropped: the panel kept the
    answer of the first change, with `settled` True). The first rebuild is held on purpose."""
    import threading

    from mcp_server.surface.dashboard.data import DashboardData

    ledger = _running_ledger(tmp_path)
    data = DashboardData(ledger, tmp_path)
    position = {"token": 0}
    data._token = lambda: (position["token"], 0.0, 0)            # type: ignore[method-assign]
    truth, held, release = {"value": "v0"}, threading.Event(), threading.Event()

    def build() -> str:
        value = truth["value"]
        if value == "v1":           # the first rebuild has read the state, then takes long
            held.set()
            release.wait(30)
        return value
    try:
        assert data._memoised("k", data._token(), build) == "v0"
        position["token"], truth["value"] = 1, "v1"
        assert data._memoised("k", data._token(), build) == "v0"       # served while v1 is built
        assert held.wait(30)
        position["token"], truth["value"] = 2, "v2"                     # the last change, during that rebuild
        data._memoised("k", data._token(), build)
        assert not data.version()["settled"]
        release.set()
        deadline = time.monotonic() + 30
        while not data.version()["settled"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert data._memoised("k", data._token(), build) == "v2"
    finally:
        release.set()
        ledger.close()
