"""The task description (domain/task.py): defaults, a round trip through TOML, and a clear refusal
naming the key for each kind of bad description."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.task import DEFAULT_TASK, load_task, parse_task


def test_no_description_is_the_builtin_task(tmp_path: Path) -> None:
    task = load_task(tmp_path)
    assert task is DEFAULT_TASK and task.is_default and task.metric == DEFAULT_METRIC
    assert task.harness == ["prepare.py"] and task.run == ["python", "train.py"]


def test_a_description_round_trips_through_toml() -> None:
    task = parse_task('harness = ["prepare.py", "lib/eval.py"]\nprepare = []\nrun = ["python", "train.py", "--fast"]\n'
                      '[metric]\nname = "val_accuracy"\ndirection = "higher"\n[budget]\ngpu = 120\n')
    assert task.metric == Metric(name="val_accuracy", direction="higher") and task.prepare is None
    assert task.budget == {"gpu": 120.0} and not task.is_default
    again = parse_task(task.to_toml())
    assert again.model_dump(exclude={"source"}) == task.model_dump(exclude={"source"})


@pytest.mark.parametrize(("text", "says"), [
    ('[metric]\ndirection = "up"\n', "metric.direction"),
    ('[metric]\nname = "val bpb"\n', "metric name"),
    ('edit = "model.py"\n', "only 'train.py'"),
    ('harness = ["../secret.py"]\n', "relative path inside the workspace"),
    ('harness = ["train.py"]\n', "cannot also be a harness file"),
    ('harness = []\n', "harness"),
    ('run = "python train.py"\n', "run"),
    ('[budget]\ngpu = -5\n', "budget"),
    ('colour = "blue"\n', "colour"),
    ('harness = [\n', "not valid TOML"),
])
def test_a_bad_description_is_refused_naming_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_task(text)
    assert says in str(e.value) and "docs/task.md" in str(e.value)
