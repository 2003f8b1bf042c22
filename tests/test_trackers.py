"""Experiment trackers, for real: a real MLflow tracking server (started here on loopback with its
own SQLite backend store) receives every experiment of a CPU session run through the MCP server,
with params, metrics, the step curve, tags and the log; killing that server mid-session loses
nothing (the runs are logged when it returns, budget_status says what waits meanwhile). W&B in
offline mode writes the run files with the same fields. The step-line parser and the --track
argument are checked on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp_harness import REPO, free_port, ledger_experiments, ok, serve_args, stdio_session

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.models import Status
from mcp_server.domain.tool_names import Tool
from mcp_server.trackers import parse_spec
from mcp_server.trackers.record import parse_curve

BIN = Path(sys.executable).parent


def test_parse_curve_reads_train_py_step_lines():
    log = ("setup: 3.5s\nstep 00001 | loss 6.9325 | lr x1.00 | 66ms | 15,474 tok/s | epoch 0 | 0.0/4s\n"
           "noise | not a step\nstep 00025 | loss 5.1679 | lr x0.50 | 41ms | 24,795 tok/s | epoch 1 | 1.0/4s\n")
    assert parse_curve(log) == [
        (1, {"loss": 6.9325, "lr": 1.0, "ms": 66.0, "tok_per_s": 15474.0, "epoch": 0.0}),
        (25, {"loss": 5.1679, "lr": 0.5, "ms": 41.0, "tok_per_s": 24795.0, "epoch": 1.0}),
    ]
    assert parse_curve("no steps here\nstep x | loss y\n") == []


@pytest.mark.parametrize("spec", ["mlflow", "mlflow=http://127.0.0.1:5000", "wandb", "wandb=my-project",
                                  "MLflow=sqlite:///tmp/x.db"])
def test_track_spec_accepted(spec):
    assert parse_spec(spec)[0] in {"mlflow", "wandb"}


@pytest.mark.parametrize("spec", ["tensorboard", "mlflow=localhost:5000", "", "=x"])
def test_track_spec_refused_with_the_valid_forms(spec):
    with pytest.raises(InvalidInput, match=r"mlflow\[=|mlflow=URI needs"):
        parse_spec(spec)


def test_serve_refuses_a_bad_track_before_starting(tmp_path, cache):
    proc = subprocess.run([sys.executable, *serve_args(tmp_path / "ws", cache, extra=["--track", "tensorboard"])],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--track must be mlflow" in proc.stderr
    assert not (tmp_path / "ws").exists()


# -- MLflow ----------------------------------------------------------------------------------------

class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 240.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server's log, kept open while it runs
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


def _runs(uri: str, tag: str) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"autoresearch/{tag}")
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out: dict[str, object] = {}
    for r in runs:
        eid = r.data.tags["autoresearch.experiment_id"]
        assert eid not in out, f"{eid} was logged twice"
        out[eid] = r
    return out


def _wait_runs(uri: str, tag: str, ids: set[str], pred=lambda r: True, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            runs = _runs(uri, tag)
        except Exception:  # noqa: BLE001 - the server is still coming up
            runs = {}
        if ids <= set(runs) and all(runs[i].info.status in ("FINISHED", "FAILED") and pred(runs[i]) for i in ids):
            return runs
        assert time.monotonic() < deadline, f"runs {sorted(ids - set(runs))} missing (have {sorted(runs)})"
        time.sleep(1.0)


def _check_run(client, run, exp) -> None:
    d = run.data
    assert d.params["seed"] == str(exp.seed) and d.params["gpu_type"] == exp.ran_on_gpu
    assert d.params["cluster"] == exp.cluster and d.params["commit"] == exp.commit
    assert d.params["wave"] == (exp.wave_id or "") and d.params["parent"] == (exp.parent_id or "")
    for k, v in exp.overrides.items():
        assert d.params[f"override.{k}"] == str(v)
    assert d.metrics["val_bpb"] == pytest.approx(exp.metrics.val_bpb)
    assert d.metrics["num_steps"] == exp.metrics.num_steps
    assert d.tags["status"] == "done" and d.tags["gpu_type"] == exp.ran_on_gpu
    assert d.tags["verdict"] in {"improvement", "within_noise", "worse", "reference", "no_reference"}
    assert d.tags["decision"] == (exp.decision.value if exp.decision else "none")
    assert "only" in d.tags["comparable_with"]                       # never compared across GPU types
    curve = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(curve) >= 2 and len({m.step for m in curve}) == len(curve)
    assert sorted(m.step for m in curve) == [m.step for m in sorted(curve, key=lambda m: m.step)]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert Path(exp.log_path).name in artifacts


@pytest.mark.anyio
async def test_mlflow_receives_every_experiment_and_survives_an_outage(tmp_path, cache, caplog):
    pytest.importorskip("mlflow", reason="pip install 'autoresearch-fleet[mlflow]'")
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    ws = tmp_path / "ws"
    args = serve_args(ws, cache, tag="trk", extra=["--track", f"mlflow={server.uri}"])
    try:
        async with stdio_session(args, tmp_path / "server.log") as client:
            await ok(client, f"{Tool.LAUNCH_EXPERIMENT}", {"description": "baseline", "replicates": 2})
            await ok(client, f"{Tool.WAIT_FOR_EXPERIMENTS}", {"timeout_s": 600})
            runs = _wait_runs(server.uri, "trk", {"e0001", "e0002"})
            exps = ledger_experiments(ws)
            mc = MlflowClient(tracking_uri=server.uri)
            for eid in ("e0001", "e0002"):
                _check_run(mc, runs[eid], exps[eid])

            # the tracker goes away mid-session: nothing blocks, nothing is lost
            server.kill()
            await ok(client, f"{Tool.LAUNCH_EXPERIMENT}", {"description": "deeper", "overrides": {"DEPTH": 3}})
            await ok(client, f"{Tool.LAUNCH_EXPERIMENT}", {"description": "seed 7", "seed": 7})
            await ok(client, f"{Tool.WAIT_FOR_EXPERIMENTS}", {"timeout_s": 600})
            await ok(client, f"{Tool.KEEP_EXPERIMENT}", {"experiment_id": "e0003",
                                                               "reason": "the tracker test keeps it"})
            deadline = time.monotonic() + 60
            while True:
                notes = (await ok(client, f"{Tool.BUDGET_STATUS}"))["notes"]
                waiting = [n for n in notes if n.startswith("tracker MLflow")]
                if waiting:
                    break
                assert time.monotonic() < deadline, notes
                time.sleep(1)
            assert "waiting to be exported" in waiting[0] and "nothing is lost" in waiting[0]

            # it comes back: the missing runs arrive, and the keep made while it was down is on its run
            server.start()
            exps = ledger_experiments(ws)
            assert all(e.status == Status.done for e in exps.values())
            runs = _wait_runs(server.uri, "trk", set(exps), pred=lambda r: r.data.tags["autoresearch.experiment_id"]
                              != "e0003" or r.data.tags["decision"] == "keep")
            mc = MlflowClient(tracking_uri=server.uri)
            for eid, e in exps.items():
                _check_run(mc, runs[eid], e)
            assert runs["e0003"].data.params["override.DEPTH"] == "3"
            assert runs["e0004"].data.params["seed"] == "7"
            deadline = time.monotonic() + 30
            while any(n.startswith("tracker MLflow") for n in (await ok(client, f"{Tool.BUDGET_STATUS}"))["notes"]):
                assert time.monotonic() < deadline
                time.sleep(1)
        # a restart of the fleet server exports nothing twice (the outbox holds what MLflow has)
        async with stdio_session(args, tmp_path / "server.log") as client:
            await ok(client, f"{Tool.BUDGET_STATUS}")
            time.sleep(3)
        assert len(_runs(server.uri, "trk")) == len(exps)
        # and the MLflow client never wrote to stdout, the stdio protocol's channel
        assert "Failed to parse JSONRPC" not in caplog.text
    finally:
        server.kill()


# -- W&B -------------------------------------------------------------------------------------------

async def _wandb_session(client, ws: Path) -> None:
    await ok(client, f"{Tool.LAUNCH_EXPERIMENT}", {"description": "deeper", "overrides": {"DEPTH": 3}})
    await ok(client, f"{Tool.WAIT_FOR_EXPERIMENTS}", {"timeout_s": 600})
    deadline = time.monotonic() + 120
    while not _offline_runs(ws) or "val_bpb" not in _read_wandb(_offline_runs(ws)[0])["summary"]:
        notes = (await ok(client, f"{Tool.BUDGET_STATUS}"))["notes"]
        assert time.monotonic() < deadline, f"no offline W&B run written; notes: {notes}"
        time.sleep(1)
    time.sleep(2)
    notes = (await ok(client, f"{Tool.BUDGET_STATUS}"))["notes"]
    assert not any(n.startswith("tracker W&B") for n in notes), notes


@pytest.mark.anyio
async def test_wandb_offline_writes_the_run_files(tmp_path, cache, caplog):
    pytest.importorskip("wandb", reason="pip install 'autoresearch-fleet[wandb]'")
    ws = tmp_path / "ws"
    args = serve_args(ws, cache, tag="wb", extra=["--track", "wandb"])
    with anyio.fail_after(900):
        async with stdio_session(args, tmp_path / "server.log",
                                 env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"}) as client:
            await _wandb_session(client, ws)
    assert "Failed to parse JSONRPC" not in caplog.text               # W&B never wrote to the protocol's stdout
    runs = _offline_runs(ws)
    exp = ledger_experiments(ws)["e0001"]
    assert len(runs) == 1
    run = _read_wandb(runs[0])
    summary, config, tags = run["summary"], run["config"], run["tags"]
    assert summary["val_bpb"] == pytest.approx(exp.metrics.val_bpb) and summary["num_steps"] == exp.metrics.num_steps
    assert summary["tag.status"] == "done" and summary["tag.gpu_type"] == exp.ran_on_gpu
    assert summary["tag.verdict"] in {"improvement", "within_noise", "worse", "reference", "no_reference"}
    assert "only" in summary["tag.comparable_with"]                  # never compared across GPU types
    assert {"status:done", f"gpu_type:{exp.ran_on_gpu}", "decision:none"} <= set(tags)
    assert config["seed"] == str(exp.seed) and config["override.DEPTH"] == "3"
    assert config["commit"] == exp.commit and config["cluster"] == exp.cluster and config["gpu_type"] == exp.ran_on_gpu
    steps = [h["_step"] for h in run["history"] if "train/loss" in h]
    assert len(steps) >= 2 and steps == sorted(steps)                 # the step curve
    assert Path(exp.log_path).name in run["files"]                    # the log, saved with the run


def _offline_runs(ws: Path) -> list[Path]:
    return sorted((ws / ".autoresearch" / "wandb").glob("wandb/offline-run-*/run-*.wandb"))


def _read_wandb(path: Path) -> dict:
    """The records of an offline W&B run file (what `wandb sync` would upload), by W&B's own reader."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    def items(update) -> dict:
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}

    out: dict = {"summary": {}, "config": {}, "tags": [], "history": [], "files": set()}
    ds = datastore.DataStore()
    ds.open_for_scan(str(path))
    while (data := ds.scan_data()) is not None:
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["config"].update(items(rec.run.config.update))
            out["tags"] = list(rec.run.tags)
        elif kind == "config":
            out["config"].update(items(rec.config.update))
        elif kind == "summary":
            out["summary"].update(items(rec.summary.update))
        elif kind == "history":
            out["history"].append(items(rec.history.item))
        elif kind == "files":
            out["files"] |= {Path(f.path).name for f in rec.files.files}
    return out


# -- verdicts that change without their experiment's row ---------------------------------------------

def test_a_verdict_moved_by_other_results_reaches_the_tracker(tmp_path):
    """A new result can move an earlier experiment's verdict (noise floor, reference) without a
    write to that experiment's row: the exporter compares every verdict again after results arrive
    and updates the runs whose tags changed. Real ledger, real MLflow client on a SQLite store."""
    pytest.importorskip("mlflow", reason="pip install 'autoresearch-fleet[mlflow]'")
    from mlflow.tracking import MlflowClient

    from mcp_server.domain.metric import DEFAULT_METRIC
    from mcp_server.domain.models import Experiment, Metrics
    from mcp_server.store.ledger import Ledger
    from mcp_server.trackers.exporter import Exporter
    from mcp_server.trackers.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = Ledger(tmp_path / "ledger.db")
    verdicts = {"e0001": "reference", "e0002": "improvement", "e0003": "worse"}
    exporter = Exporter(ledger, [MlflowTracker(uri, "vt")], tmp_path / "trackers.db", metric=DEFAULT_METRIC,
                        session_tag="vt", rescan_s=0.5,
                        verdicts_of=lambda exps: {e.id: verdicts[e.id] for e in exps})

    def finish(n: int, bpb: float) -> None:
        eid = f"e{n:04d}"
        ledger.insert_launch([Experiment(id=eid, description=f"exp {n}", commit=f"{n:040x}", code_hash=f"{n:040x}",
                                         harness_hash="h" * 64, seed=42, created_at=1000.0 + n)])
        assert ledger.begin_attempt(eid, 1, "local", "CPU", 1, None, str(tmp_path / eid))
        assert ledger.finish_attempt(eid, 1, Status.done, metrics=Metrics(val_bpb=bpb, num_steps=10))

    def verdict_tags() -> dict[str, str]:
        mc = MlflowClient(tracking_uri=uri)
        exp = mc.get_experiment_by_name("autoresearch/vt")
        runs = mc.search_runs([exp.experiment_id]) if exp is not None else []
        return {r.data.tags["autoresearch.experiment_id"]: r.data.tags["verdict"] for r in runs}

    exporter.start()
    try:
        finish(1, 1.20)
        finish(2, 1.10)
        assert exporter.flush(120)
        assert verdict_tags() == {"e0001": "reference", "e0002": "improvement"}
        verdicts["e0002"] = "within_noise"          # e0003's result widens the noise floor: e0002 moves
        finish(3, 1.30)
        deadline = time.monotonic() + 60
        while verdict_tags() != {"e0001": "reference", "e0002": "within_noise", "e0003": "worse"}:
            assert time.monotonic() < deadline, verdict_tags()
            time.sleep(0.5)
    finally:
        exporter.close()
        ledger.close()


def test_an_experiment_that_ends_while_the_exporter_reads_it_as_running_is_still_exported(tmp_path):
    """The hook marks an experiment when it ends; the exporter's pass drops the ids it read as still
    running. If the experiment ends between that read and the drop, its mark must survive (once it
    did not: the run never reached the tracker until the next start). The ledger read is made to
    straddle the end on purpose. Real ledger, real MLflow client on a SQLite store."""
    pytest.importorskip("mlflow", reason="pip install 'autoresearch-fleet[mlflow]'")

    from mcp_server.domain.metric import DEFAULT_METRIC
    from mcp_server.domain.models import Experiment, Metrics
    from mcp_server.store.ledger import Ledger
    from mcp_server.trackers.exporter import Exporter
    from mcp_server.trackers.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = Ledger(tmp_path / "ledger.db")
    exporter = Exporter(ledger, [MlflowTracker(uri, "race")], tmp_path / "trackers.db", metric=DEFAULT_METRIC,
                        session_tag="race", rescan_s=3600.0, verdicts_of=lambda exps: {})
    ledger.insert_launch([Experiment(id="e0001", description="exp 1", commit="1" * 40, code_hash="1" * 40,
                                     harness_hash="h" * 64, seed=42, created_at=1000.0)])

    read_then_end = threading.Event()
    real_get_many = ledger.get_many

    def get_many(ids):
        got = real_get_many(ids)           # read while e0001 is running ...
        if "e0001" in ids and not read_then_end.is_set():
            read_then_end.set()            # ... then it ends before the pass drops the running ids
            assert ledger.finish_attempt("e0001", 1, Status.done, metrics=Metrics(val_bpb=1.2, num_steps=10))
        return got
    ledger.get_many = get_many             # type: ignore[method-assign]

    exporter.start()
    try:
        assert ledger.begin_attempt("e0001", 1, "local", "CPU", 1, None, str(tmp_path / "e0001"))   # marks it
        assert exporter.flush(120)
        assert read_then_end.is_set(), "the exporter never read e0001 while it was running"
        assert set(_runs(uri, "race")) == {"e0001"}
    finally:
        exporter.close()
        ledger.close()
