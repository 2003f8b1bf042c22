"""progress.png: the task's metric (val_bpb by default) per experiment in launch order, coloured by
GPU type, kept experiments highlighted, and the running best per GPU type (results on different
GPU types are not comparable, so each type gets its own best line). Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import FAILED, Decision, Experiment

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def _gpu(e: Experiment) -> str:
    return e.ran_on_gpu or e.gpu_type or "any"


def _launch_key(e: Experiment) -> tuple[float, int, str]:
    digits = "".join(ch for ch in e.id if ch.isdigit())
    return (e.created_at or 0.0, int(digits) if digits else 0, e.id)


def render_progress(experiments: list[Experiment], path: Path | None = None,
                    metric: Metric = DEFAULT_METRIC) -> tuple[bytes, str]:
    """Draw the chart of `metric` (the task's; its direction decides the running best and the
    label); write it atomically to `path` when given. Returns (PNG bytes, one-line summary)."""
    exps = sorted(experiments, key=_launch_key)
    types = sorted({_gpu(e) for e in exps})
    colour = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    try:
        best: dict[str, tuple[float, str]] = {}
        done_by_type: dict[str, list[tuple[int, float]]] = defaultdict(list)
        failed_x: dict[str, list[int]] = defaultdict(list)
        kept: list[tuple[int, float]] = []
        for x, e in enumerate(exps, start=1):
            bpb = metric.value(e)
            t = _gpu(e)
            if bpb is not None:
                done_by_type[t].append((x, bpb))
                if e.decision == Decision.keep:
                    kept.append((x, bpb))
                if t not in best or metric.better(bpb, best[t][0]):
                    best[t] = (bpb, e.id)
            elif e.status in FAILED:
                failed_x[t].append(x)

        all_bpb = [y for pts in done_by_type.values() for _, y in pts]
        for t in types:
            pts = done_by_type.get(t, [])
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=18, color=colour[t], alpha=0.75, label=f"{t} ({len(pts)} done)", zorder=2)
                run_x, run_y, cur = [], [], math.inf if metric.lower_is_better else -math.inf
                for x, y in pts:
                    cur = metric.best([cur, y])
                    run_x.append(x)
                    run_y.append(cur)
                run_x.append(len(exps))
                run_y.append(cur)
                ax.step(run_x, run_y, where="post", color=colour[t], linewidth=1.6, label=f"{t} running best", zorder=3)
        if failed_x and all_bpb:
            top = max(all_bpb) if metric.lower_is_better else min(all_bpb)   # the worst end
            for t, fxs in failed_x.items():
                ax.scatter(fxs, [top] * len(fxs), marker="x", color=colour[t], s=22, alpha=0.6, zorder=2)
            ax.scatter([], [], marker="x", color="grey", label="failed (drawn at top)")
        if kept:
            kx, ky = zip(*kept, strict=True)
            ax.scatter(kx, ky, s=140, marker="*", facecolor="gold", edgecolor="black", linewidth=0.8,
                       label=f"kept ({len(kept)})", zorder=4)
        if not all_bpb:
            ax.text(0.5, 0.5, "no finished experiments yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("experiment (launch order)")
        ax.set_ylabel(metric.describe())
        ax.set_title(f"autoresearch fleet: {len(exps)} experiments, compare within a GPU type only")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    png = buf.getvalue()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, path)
    n_done = len(all_bpb)
    bests = "; ".join(f"best on {t}: {b:.6f} ({i})" for t, (b, i) in sorted(best.items())) or "no results yet"
    summary = f"{len(exps)} experiments, {n_done} finished with {metric.name}, {len(kept)} kept; {bests}."
    return png, summary
