"""What a wheel ships: every package of mcp_server/ is listed in pyproject.toml, the template is
shipped inside the package, and the template is found both in a checkout and in an install.
(scripts/wheel_smoke.py, run by .ci/run, installs a real wheel into a fresh venv.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mcp_server").rglob("__init__.py")}
    assert on_disk | {"mcp_server.train_template"} == listed


def test_the_template_ships_inside_the_package():
    setuptools = _pyproject()["tool"]["setuptools"]
    # a link, not a package-dir mapping: an editable install is then a static path, no import finder
    assert setuptools.get("package-dir", {"": "."}) == {"": "."}
    link = REPO / "mcp_server" / "train_template"
    assert link.is_symlink() and link.resolve() == (REPO / "train_template").resolve()
    shipped = setuptools["package-data"]["mcp_server.train_template"]
    for name in ("prepare.py", "train.py", "sky_task.yaml"):
        assert (REPO / "train_template" / name).is_file()
        assert any(Path(name).match(glob) for glob in shipped), name
    assert (REPO / "LICENSE").is_file() and (REPO / "mcp_server" / "py.typed").is_file()


def test_the_template_is_found_in_a_checkout_and_in_an_install(tmp_path):
    from mcp_server.domain import config

    assert config.TEMPLATE_DIR == REPO / "train_template"
    # an installed layout: site-packages/mcp_server/{domain,train_template}, no repo around it
    site = tmp_path / "site-packages"
    skip = shutil.ignore_patterns("__pycache__", "train_template")   # (the link: the real folder below)
    shutil.copytree(REPO / "mcp_server", site / "mcp_server", ignore=skip)
    shutil.copytree(REPO / "train_template", site / "mcp_server" / "train_template")
    out = subprocess.run([sys.executable, "-c", "from mcp_server.domain import config; print(config.TEMPLATE_DIR)"],
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(site / "mcp_server" / "train_template")
