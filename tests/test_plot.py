"""progress.png: val_bpb per experiment in launch order, kept highlighted, running best per GPU
type, colour by GPU type."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np

from mcp_server.domain.models import Decision, Experiment, Metrics, Status
from mcp_server.domain.plot import PALETTE, render_progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _exp(i: int, gpu: str, bpb: float | None, status: Status = Status.done, kept: bool = False) -> Experiment:
    return Experiment(id=f"e{i:04d}", description=f"exp {i}", status=status, ran_on_gpu=gpu, gpu_type=gpu,
                      metrics=Metrics(val_bpb=bpb), created_at=1000.0 + i,
                      decision=Decision.keep if kept else None)


def _pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")[..., :3]


def _has_colour(img: np.ndarray, hex_colour: str, tol: float = 0.03) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool((np.abs(img - rgb).max(axis=-1) < tol).any())


def test_writes_png_and_summarises_best_per_gpu_type(tmp_path):
    exps = [_exp(1, "H100", 1.10), _exp(2, "H100", 1.05, kept=True), _exp(3, "H200", 0.98),
            _exp(4, "H100", None, status=Status.crash), _exp(5, "H200", 1.01), _exp(6, "H100", None, Status.running)]
    out = tmp_path / "sub" / "progress.png"
    png, summary = render_progress(exps, out)
    assert png.startswith(PNG_MAGIC)
    assert out.read_bytes() == png
    assert "6 experiments" in summary and "4 finished" in summary and "1 kept" in summary
    assert "best on H100: 1.050000 (e0002)" in summary and "best on H200: 0.980000 (e0003)" in summary
    img = _pixels(png)
    assert img.shape[:2] == (500, 1000)
    # two GPU types -> the first two palette colours; kept -> gold star
    assert _has_colour(img, PALETTE[0]) and _has_colour(img, PALETTE[1])
    assert _has_colour(img, "#ffd700")


def test_no_gold_without_a_kept_experiment_and_one_colour_per_type(tmp_path):
    png, summary = render_progress([_exp(1, "CPU", 1.2), _exp(2, "CPU", 1.1)], None)
    img = _pixels(png)
    assert not _has_colour(img, "#ffd700")
    assert _has_colour(img, PALETTE[0]) and not _has_colour(img, PALETTE[1])
    assert "0 kept" in summary and "best on CPU: 1.100000 (e0002)" in summary


def test_launch_order_not_argument_order(tmp_path):
    a = [_exp(2, "CPU", 1.0), _exp(1, "CPU", 2.0)]
    png1, s1 = render_progress(a)
    png2, s2 = render_progress(list(reversed(a)))
    assert png1 == png2 and s1 == s2


def test_empty_and_all_failed(tmp_path):
    png, summary = render_progress([], tmp_path / "p.png")
    assert png.startswith(PNG_MAGIC) and "0 experiments" in summary and "no results yet" in summary
    png, summary = render_progress([_exp(1, "CPU", None, Status.crash)], None)
    assert png.startswith(PNG_MAGIC) and "0 finished" in summary
