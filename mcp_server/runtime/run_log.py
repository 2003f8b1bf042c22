"""Reading a run's output: the metrics in train.py's summary block and RESULT_JSON line, the
runner's result line, and the classification of a finished run (done / nan / oom / crash).

STANDARD LIBRARY ONLY, like runner.py: this file is shipped beside runner.py into every run
directory (`runner.RUNTIME_FILES`) and runs on slots where the package is not installed.
"""

from __future__ import annotations

import json
import re
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:   # (annotations only: importing typing costs every runner start ~3 ms)
    from typing import Any

#: the runner's last line: this prefix, then the result as JSON
RESULT_PREFIX = "AUTORESEARCH_RESULT: "
RESULT_JSON_PREFIX = "RESULT_JSON:"
# Types of the summary keys (contracts.md section 1); other keys are kept as float or str.
_INT_KEYS = frozenset({"num_steps", "depth"})
_STR_KEYS = frozenset({"device"})
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s+(.*?)\s*$")
_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "MemoryError")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*$|^[A-Za-z_][\w.]*: ")


def parse_result(log_text: str) -> dict[str, Any]:
    """Metrics from train.py's output: the summary block merged with the final RESULT_JSON line.

    RESULT_JSON wins where both give a key (it is the machine-readable one); the summary block
    fills in anything it lacks. Returns {} when the log has neither.
    """
    lines = log_text.splitlines()
    metrics: dict[str, Any] = {}

    # Summary block: `key: value` lines after the LAST line that is exactly '---'.
    last_sep = max((i for i, line in enumerate(lines) if line.strip() == "---"), default=None)
    if last_sep is not None:
        for line in lines[last_sep + 1:]:
            if line.startswith(RESULT_JSON_PREFIX):
                break
            m = _SUMMARY_LINE.match(line.strip())
            if m:
                metrics[m.group(1)] = _summary_value(m.group(1), m.group(2))

    result_json = _find_result_json(lines)
    if result_json is not None:
        metrics.update(result_json)
    return metrics


def parse_runner_output(stdout_text: str) -> dict[str, Any] | None:
    """The runner's result object from its stdout (the last `AUTORESEARCH_RESULT:` line), or None.

    For backends that only see the runner's stdout (e.g. a remote job log).
    """
    for line in reversed(stdout_text.splitlines()):
        line = line.strip()
        if line.startswith(RESULT_PREFIX):
            try:
                obj = json.loads(line[len(RESULT_PREFIX):])
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def _summary_value(key: str, raw: str) -> Any:
    if key in _STR_KEYS:
        return raw
    if raw.lower() in ("none", "null", "n/a", "nan", ""):
        return None
    try:
        return int(float(raw)) if key in _INT_KEYS else float(raw)
    except ValueError:
        return raw


def _find_result_json(lines: list[str]) -> dict[str, Any] | None:
    """The object on the last `RESULT_JSON:` line, or None if absent or not a JSON object."""
    for line in reversed(lines):
        if line.startswith(RESULT_JSON_PREFIX):
            try:
                obj = json.loads(line[len(RESULT_JSON_PREFIX):].strip())
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def _reported(value: Any) -> bool:
    """A metric value the run really reported: a number (NaN included: judged as a result)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail_line(lines: list[str]) -> str | None:
    """The last `FAIL:` line that names nan/exploded (train.py's own divergence report)."""
    for line in reversed(lines):
        s = line.strip()
        if s.startswith("FAIL:") and ("nan" in s.lower() or "exploded" in s.lower()):
            return s
    return None


def _crash_error(lines: list[str]) -> str | None:
    """The most telling lines of a failure: the exception line and where it was raised.

    For a Python traceback that is its last line ('ValueError: boom') plus the innermost
    'File ..., line N' frame; otherwise the last non-empty line of the log.
    """
    meaningful = [ln.rstrip() for ln in lines if ln.strip()]
    if not meaningful:
        return None
    tb_start = max((i for i, ln in enumerate(meaningful) if ln.startswith("Traceback (most recent call last)")),
                   default=None)
    if tb_start is not None:
        tb = meaningful[tb_start + 1:]
        exc = next((ln.strip() for ln in reversed(tb)
                    if not ln.startswith(" ") and _EXCEPTION_LINE.match(ln.strip())), None)
        if exc is None:
            exc = next((ln.strip() for ln in reversed(tb) if not ln.startswith(" ")), tb[-1].strip() if tb else None)
        frame = next((ln.strip() for ln in reversed(tb) if ln.strip().startswith('File "')), None)
        if exc and frame:
            return f"{exc} ({frame})"
        if exc:
            return exc
    return meaningful[-1].strip()


def classify(exit_code: int | None, log_text: str, *, timed_out: bool, cancelled: bool,
             timeout_s: float, metric: str = "val_bpb") -> tuple[str, str | None]:
    """(status, error) for a finished train.py, per contracts.md section 2 step 4. A run that
    exits 0 is done when it reported `metric`: in its RESULT_JSON line or, without one, as a
    `metric: value` line of the summary block after the last `---` (karpathy's format)."""
    lines = log_text.splitlines()
    if cancelled:
        return "cancelled", "cancelled: the runner received a stop signal and killed train.py's process group"
    if timed_out:
        return "timeout", (f"timeout: train.py ran past the hard timeout of {timeout_s:g} s and its process "
                           "group was killed; shorten the run or raise the timeout")
    if exit_code == 0 and _reported(parse_result(log_text).get(metric)):
        return "done", None
    fail = _fail_line(lines)
    if fail is not None:
        return "nan", fail
    if any(marker in line for line in lines[-200:] for marker in _OOM_MARKERS):
        oom = next((ln.strip() for ln in reversed(lines) if any(m in ln for m in _OOM_MARKERS)), "out of memory")
        return "oom", f"out of memory: {oom}"
    if exit_code == 0:
        return "crash", (f"train.py exited 0 but reported no {metric}: expected a RESULT_JSON line with "
                         f"{metric!r}, or a summary block after a '---' line with a line '{metric}: <number>'")
    detail = _crash_error(lines)
    if exit_code is not None and exit_code < 0:
        sig = -exit_code
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = f"signal {sig}"
        hint = " (possibly the kernel OOM killer)" if sig == signal.SIGKILL else ""
        head = f"train.py was killed by {signame}{hint}"
    else:
        head = f"train.py exited with code {exit_code}"
    return "crash", f"{head}: {detail}" if detail else head
