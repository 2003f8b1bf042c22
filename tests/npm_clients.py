"""The npm clients the tests drive (tests/js/package.json, pinned by its lock file): the MCP
Inspector CLI, the TypeScript SDK and the Claude Code CLI. `.ci/run` installs them with `npm ci`;
a test that finds them missing installs them itself, and skips, saying so, only when npm cannot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parent / "js"


def install() -> str | None:
    """Install tests/js/node_modules from the lock file; None when done, else why it could not."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    try:
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS,
                             capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "npm ci took over 15 minutes"
    return None if res.returncode == 0 else f"npm ci failed: {(res.stderr or res.stdout)[-500:]}"


def tool(name: str) -> tuple[Path | None, str]:
    """(tests/js/node_modules/.bin/<name>, "") installed on demand, or (None, why not)."""
    exe = JS / "node_modules" / ".bin" / name
    if not exe.exists():
        why = install()
        if why is not None or not exe.exists():
            return None, f"npm could not install the clients of tests/js ({why or name + ' missing after npm ci'})"
    return exe, ""
