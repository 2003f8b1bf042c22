"""`autoresearch-fleet`: serve the MCP server (stdio or HTTP), run the demo, or look at a workspace.

    autoresearch-fleet serve [--transport stdio|http] [--workspace DIR] [--tag T] [--backend local|skypilot] ...
    autoresearch-fleet demo  [--workspace DIR] [--time-budget S]
    autoresearch-fleet status [--workspace DIR]
    autoresearch-fleet report [--workspace DIR]
    autoresearch-fleet init PATH                      (write an existing repo's autoresearch.toml)
    autoresearch-fleet import-results FILE --workspace DIR --gpu-type TYPE   (earlier results as history)
    autoresearch-fleet dashboard [--workspace DIR] [--port P]   (read-only, http://127.0.0.1:P/dashboard)

In stdio mode nothing but the MCP protocol goes to stdout: logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import FleetError
from mcp_server.domain.tool_names import Tool

DEFAULT_HTTP_PORT = 8765
DEFAULT_DASHBOARD_PORT = 8766


def _tiers(text: str) -> list[str]:
    labels = [t.strip() for t in text.split(",") if t.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("give GPU type labels separated by commas, e.g. A10G,H100")
    return labels


def _track(text: str) -> str:
    from mcp_server.trackers import parse_spec

    try:
        parse_spec(text)
    except FleetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _session_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", type=Path, default=Path(os.environ.get("AUTORESEARCH_WORKSPACE", "research")),
                   help="the research git repo (created from train_template/ when missing); default ./research")
    p.add_argument("--tag", default=os.environ.get("AUTORESEARCH_TAG", "default"),
                   help="session tag: the branch is autoresearch/<tag>")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch-fleet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio for Claude Code, or streamable HTTP)")
    _session_args(serve)
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (non-loopback needs --token)")
    serve.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT)
    serve.add_argument("--token", default=None,
                       help="bearer token for HTTP (default: $AUTORESEARCH_FLEET_TOKEN); required off loopback")
    serve.add_argument("--backend", choices=["local", "skypilot"], default="local")
    serve.add_argument("--profile", choices=["cpu", "gpu"], default=None,
                       help="harness size (default: gpu if CUDA is available, else cpu)")
    serve.add_argument("--cpu-slots", type=int, default=None, help="local CPU slots when there is no GPU")
    serve.add_argument("--time-budget", type=float, default=None, help="training seconds per run (override)")
    serve.add_argument("--simulate-tiers", type=_tiers, default=None, metavar="H100,H200",
                       help="SIMULATION: label local slots as these GPU types to exercise tiering on CPU")
    serve.add_argument("--max-clusters", type=int, default=None)
    serve.add_argument("--max-concurrent", type=int, default=None)
    serve.add_argument("--gpu-hour-budget", type=float, default=None)
    serve.add_argument("--max-wait-s", type=float, default=None,
                       help=f"cap on one {Tool.WAIT_FOR_EXPERIMENTS} call in seconds (default 50: MCP clients time out "
                            "near 60 s; raise it for clients with a longer timeout, e.g. Claude Code)")
    serve.add_argument("--cache-dir", type=Path, default=None, help="AUTORESEARCH_CACHE for local runs")
    serve.add_argument("--track", action="append", type=_track, default=None, metavar="mlflow[=URI]|wandb[=PROJECT]",
                       help="export every finished experiment to an experiment tracker (repeatable): MLflow "
                            "(default URI $MLFLOW_TRACKING_URI or http://127.0.0.1:5000) or Weights & Biases "
                            "(WANDB_MODE=offline writes the run files only)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    demo = sub.add_parser("demo", help="a scripted research session through the real server (CPU, < 5 min)")
    demo.add_argument("--workspace", type=Path, default=None,
                      help="default: ./research/demo-<timestamp> (a fresh one per run)")
    demo.add_argument("--time-budget", type=float, default=None, help="training seconds per run (default 8)")
    demo.add_argument("--slots", type=int, default=None, help="local CPU slots (default 2)")

    status = sub.add_parser("status", help="summary of a workspace's session: experiments, best per GPU type")
    _session_args(status)
    report = sub.add_parser("report", help=f"write results.tsv and progress.png, print the {Tool.LEADERBOARD}")
    _session_args(report)
    init = sub.add_parser("init", help="write the task description (autoresearch.toml) of an existing repo, "
                                       "deciding everything from what is there (asks nothing)")
    init.add_argument("path", type=Path, help="the repository (karpathy's layout: train.py, prepare.py)")
    imp = sub.add_parser("import-results", help="load an earlier results.tsv into the ledger as history")
    imp.add_argument("results", type=Path, help="the results.tsv (karpathy's columns, or any with commit, "
                                                "<metric>, status, description)")
    _session_args(imp)
    imp.add_argument("--gpu-type", required=True, help="the GPU type the imported runs ran on, e.g. H100")
    dash = sub.add_parser("dashboard", help="a read-only live dashboard of a workspace in the browser (loopback)")
    _session_args(dash)
    dash.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT)
    dash.add_argument("--gpu-hour-budget", type=float, default=None, help="shown against the GPU-hours spent")
    return parser


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    values: dict = {"workspace": args.workspace, "tag": args.tag, "backend": args.backend, "profile": args.profile,
                    "time_budget_s": args.time_budget, "slot_labels": args.simulate_tiers, "cache_dir": args.cache_dir,
                    "trackers": getattr(args, "track", None)}
    for arg, field in (("cpu_slots", "cpu_slots"), ("max_clusters", "max_clusters"),
                       ("max_concurrent", "max_concurrent"), ("gpu_hour_budget", "gpu_hour_budget"),
                       ("max_wait_s", "max_wait_s")):
        if getattr(args, arg) is not None:
            values[field] = getattr(args, arg)
    if args.simulate_tiers and args.cpu_slots is None:
        values["cpu_slots"] = len(args.simulate_tiers)
    if values["cache_dir"] is None and os.environ.get("AUTORESEARCH_CACHE"):
        values["cache_dir"] = Path(os.environ["AUTORESEARCH_CACHE"])
    return FleetConfig(**{k: v for k, v in values.items() if v is not None})


def setup_logging(level: str = "INFO") -> None:
    """Everything to stderr: in stdio mode stdout carries the protocol only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from mcp_server.surface import http
    from mcp_server.surface.server import build_server

    token = args.token or os.environ.get(http.TOKEN_ENV) or None
    if args.transport == "http":
        try:
            http.check_bind(args.host, token)  # refuse before anything starts
        except http.InsecureBind as exc:
            print(f"autoresearch-fleet: {exc}", file=sys.stderr)
            return 2
    try:
        config = config_from_args(args)
        server = build_server(config)
        if args.transport == "stdio":
            server.run("stdio")
        else:
            http.serve(server, host=args.host, port=args.port, token=token)
    except BaseException as exc:  # noqa: BLE001 - a refusal to start is one line, not a traceback
        reason = _fleet_error(exc)
        if reason is None:
            raise
        print(f"autoresearch-fleet: cannot serve: {reason}", file=sys.stderr)
        return 1
    return 0


def _fleet_error(exc: BaseException, depth: int = 0) -> FleetError | None:
    """The FleetError behind a failed start (the SDK wraps it in exception groups)."""
    if isinstance(exc, FleetError):
        return exc
    if depth > 8:
        return None
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _fleet_error(inner, depth + 1)
            if found is not None:
                return found
    cause = exc.__cause__ or exc.__context__
    return _fleet_error(cause, depth + 1) if cause is not None else None


def _open_ledger(workspace: Path):
    """The workspace's ledger for reading beside a server that may be running: never migrated."""
    from mcp_server.domain import paths
    from mcp_server.store.ledger import Ledger, LedgerError

    path = paths.ledger_path(workspace)
    if not path.exists():
        print(f"No research session in {workspace} (no {path}). Start one with `autoresearch-fleet serve "
              f"--workspace {workspace}` or `autoresearch-fleet demo`.", file=sys.stderr)
        return None
    try:
        return Ledger(path, migrate=False)
    except LedgerError as exc:
        print(str(exc), file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from mcp_server.domain import analysis

    ledger = _open_ledger(args.workspace)
    if ledger is None:
        return 1
    try:
        counts = ledger.count_by_status()
        clusters = ledger.clusters()
        usage = ledger.usage()
        exps = ledger.all_experiments()
        tag = ledger.get_meta("tag") or args.tag
        print(f"workspace {args.workspace}  branch autoresearch/{tag}")
        print(f"experiments {sum(counts.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(f"clusters {len(clusters)}: " + ", ".join(f"{c.name} ({c.gpu_type}, {c.state})" for c in clusters))
        print(f"GPU-hours {usage['gpu_hours'] + usage['gpu_hours_in_flight']:.3f}, "
              f"est. cost ${usage['cost_usd'] + usage['cost_usd_in_flight']:.2f}")
        from mcp_server.domain.task import load_task
        metric = load_task(Path(args.workspace)).metric
        board = analysis.leaderboard(exps, limit=1, metric=metric)
        for gpu, rows in board.by_gpu_type.items():
            if rows:
                r = rows[0]
                noise = board.noise_floor.get(gpu)
                named = "" if metric.name == "val_bpb" else f"{metric.name} "
                print(f"best on {gpu}: {named}{r.val_bpb:.6f} over {r.seeds} seed(s), {r.experiment_id} "
                      f"({r.description}); "
                      f"noise floor {'n/a' if noise is None else f'{noise:.5f}'}")
    finally:
        ledger.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mcp_server.domain import analysis, paths, plot

    ledger = _open_ledger(args.workspace)
    if ledger is None:
        return 1
    try:
        from mcp_server.domain.task import load_task
        metric = load_task(Path(args.workspace)).metric
        tsv = ledger.export_tsv(paths.report_tsv(args.workspace), metric.name)
        exps = ledger.all_experiments()
        png = paths.report_png(args.workspace)
        _, summary = plot.render_progress(exps, png, metric)
        print(analysis.leaderboard_text(analysis.leaderboard(exps, limit=20, metric=metric)))
        print(f"\n{summary}\nwrote {tsv} and {png}")
    finally:
        ledger.close()
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard of a workspace on loopback, reading its ledger (no workspace lock: a
    server may be running the session at the same time)."""
    setup_logging("WARNING")
    import uvicorn

    from mcp_server.surface.dashboard import DashboardData, standalone_app

    ledger = _open_ledger(args.workspace)
    if ledger is None:
        return 1
    from mcp_server.domain.task import load_task
    data = DashboardData(ledger, args.workspace, metric=load_task(Path(args.workspace)).metric,
                         gpu_hour_budget=args.gpu_hour_budget)
    print(f"dashboard of {args.workspace} at http://127.0.0.1:{args.port}/dashboard (read-only; Ctrl-C stops it)",
          file=sys.stderr)
    try:
        uvicorn.run(standalone_app(data), host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        ledger.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "demo":
        from mcp_server import demo

        return demo.main(workspace=args.workspace, time_budget=args.time_budget, slots=args.slots)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command in ("init", "import-results"):
        return cmd_adopt(args)
    if args.command == "dashboard":
        return cmd_dashboard(args)
    return 2


def cmd_adopt(args: argparse.Namespace) -> int:
    """`init` and `import-results`: one line per decision; a refusal is one line on stderr."""
    from mcp_server.engine import adoption

    try:
        if args.command == "init":
            task, why, written = adoption.init_task(args.path)
            print(f"{'wrote' if written else 'kept'} {task.source}:")
            for line in why:
                print(f"  {line}")
            print(f"next: autoresearch-fleet serve --workspace {args.path}")
        else:
            metric, new, old = adoption.import_results(args.results, args.workspace, args.gpu_type, args.tag)
            print(f"imported {new} row(s) of {args.results} (metric {metric}, GPU type {args.gpu_type}); "
                  f"{old} already imported before. They show on the {Tool.LEADERBOARD} as history, marked "
                  "imported, and never count as a noise estimate.")
    except FleetError as exc:
        print(f"autoresearch-fleet: {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
