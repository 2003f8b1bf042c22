"""Fixtures shared by the whole test suite.

prepared_cache: a directory usable as AUTORESEARCH_CACHE in which `python prepare.py` has
    prepared the cpu profile's offline demo corpus (tokenizer + token shards), once per session.
    Treat it as read-only: every test of the session shares it.
cache: the same directory, under the name the engine and MCP tests use.
engines: builds engines for a test and closes them (and their runs) after it (engine_helpers.EngineBox).
anyio_backend: async tests run on asyncio.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "train_template"


def harness_env(cache: Path, **extra: str) -> dict[str, str]:
    """os.environ without any AUTORESEARCH_* setting of the caller's, plus the cpu/demo profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_PROFILE="cpu", AUTORESEARCH_DATA="demo", AUTORESEARCH_CACHE=str(cache))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("autoresearch-cache")
    proc = subprocess.run([sys.executable, str(TEMPLATE / "prepare.py")], cwd=TEMPLATE, env=harness_env(cache),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"prepare.py failed:\n{proc.stdout}\n{proc.stderr}"
    return cache


@pytest.fixture
def cache(prepared_cache: Path) -> Path:
    return prepared_cache


@pytest.fixture
def engines():
    from engine_helpers import EngineBox

    box = EngineBox()
    yield box
    box.cleanup()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
