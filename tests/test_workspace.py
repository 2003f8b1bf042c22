"""The research workspace, on real git repositories in temporary directories."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from pathlib import Path

import git
import pytest

from mcp_server.domain.config import TEMPLATE_DIR
from mcp_server.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from mcp_server.domain.variants import apply_overrides, factorial, list_constants
from mcp_server.store.workspace import EXPERIMENT_REF_PREFIX, Workspace, blob_sha

TRAIN = '''"""tiny train.py"""
DEPTH = 8  # layers
MATRIX_LR = 0.04
WINDOW_PATTERN = "SSSL"
print("training")
'''
HARNESS = 'print("the fixed harness")\n'


@pytest.fixture
def template(tmp_path: Path) -> Path:
    d = tmp_path / "template"
    d.mkdir()
    (d / "train.py").write_text(TRAIN)
    (d / "prepare.py").write_text(HARNESS)
    (d / "sky_task.yaml").write_text("resources:\n  accelerators: H100:1\n")
    (d / "notes.md").write_text("not part of the template\n")
    return d


@pytest.fixture
def ws(tmp_path: Path, template: Path):
    w = Workspace(tmp_path / "research", "t1", template)
    yield w
    w.close()


def git_out(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout.strip()


def state(path: Path) -> tuple:
    """Everything an error must leave alone: refs, HEAD, the index, the working tree."""
    git_dir = path / ".git"
    refs = git_out(path, "for-each-ref", "--format=%(objectname) %(refname)")
    head = (git_dir / "HEAD").read_text()
    index = hashlib.sha256((git_dir / "index").read_bytes()).hexdigest() if (git_dir / "index").exists() else None
    files = {}
    for root, dirs, names in os.walk(path):
        rel_root = Path(root).relative_to(path)
        if rel_root.parts[:1] == (".git",):
            continue
        for name in dirs + names:
            p = Path(root) / name
            rel = str(rel_root / name)
            if rel == ".git":
                continue
            if p.is_symlink():
                files[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                files[rel] = p.read_bytes()
            else:
                files[rel] = "dir"
    return refs, head, index, files


def tree_state(path: Path) -> dict:
    """Working tree only (for directories that are not repositories)."""
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else "dir" for p in sorted(path.rglob("*"))}


def launch(ws: Workspace, exp_id: str, overrides: dict | None = None, source: str | None = None,
           parent: str | None = None, message: str = "experiment") -> str:
    """What the engine does for one experiment: read, rewrite, snapshot."""
    text = apply_overrides(ws.read_source(source), overrides or {})
    return ws.snapshot(exp_id, text, parent or ws.head_commit(), message)


# -- creation ----------------------------------------------------------------------------------


def test_new_workspace_is_created_from_the_template(ws: Workspace, template: Path):
    assert sorted(p.name for p in ws.path.iterdir() if p.name != ".git") == [".gitignore", "prepare.py",
                                                                             "sky_task.yaml", "train.py"]
    assert (ws.path / "train.py").read_text() == TRAIN
    assert (ws.path / ".gitignore").read_text() == ".autoresearch/\n"
    assert ws.branch == "autoresearch/t1" and ws.repo.active_branch.name == "autoresearch/t1"
    assert git_out(ws.path, "log", "--format=%s", ws.branch) == "template"
    assert git_out(ws.path, "ls-tree", "--name-only", "HEAD").split() == [".gitignore", "prepare.py",
                                                                          "sky_task.yaml", "train.py"]
    (ws.path / ".autoresearch" / "runs").mkdir(parents=True)
    (ws.path / ".autoresearch" / "ledger.db").write_text("x")
    assert git_out(ws.path, "status", "--porcelain") == ""  # engine state is ignored
    assert ws.head_commit() == git_out(ws.path, "rev-parse", "HEAD")


def test_reopening_is_idempotent_and_a_new_tag_branches_from_head(ws: Workspace, template: Path):
    head = ws.head_commit()
    again = Workspace(ws.path, "t1", template)
    assert again.head_commit() == head and git_out(ws.path, "rev-list", "--count", "--all") == "1"
    other = Workspace(ws.path, "t2", template)
    assert other.repo.active_branch.name == "autoresearch/t2" and other.head_commit() == head
    back = Workspace(ws.path, "t1", template)
    assert back.repo.active_branch.name == "autoresearch/t1"


def test_workspace_inside_another_repository_gets_its_own(tmp_path: Path, template: Path):
    outer = tmp_path / "project"
    git.Repo.init(outer)
    w = Workspace(outer / "research", "t1", template)
    assert Path(w.repo.git_dir) == (outer / "research" / ".git")
    assert git_out(outer, "status", "--porcelain", "--ignored") == "?? research/"


def test_existing_directory_with_other_files_is_initialised_without_touching_them(tmp_path: Path, template: Path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "data.csv").write_text("1,2\n")
    w = Workspace(d, "t1", template)
    assert (d / "data.csv").read_text() == "1,2\n"
    assert git_out(d, "status", "--porcelain") == "?? data.csv"
    assert w.read_source() == TRAIN


def test_creation_refuses_to_overwrite_files(tmp_path: Path, template: Path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "train.py").write_text("my own work\n")
    before = tree_state(d)
    with pytest.raises(Conflict, match="already holds train.py; refusing to overwrite"):
        Workspace(d, "t1", template)
    assert tree_state(d) == before and not (d / ".git").exists()


def test_incomplete_template_creates_nothing(tmp_path: Path, template: Path):
    (template / "prepare.py").unlink()
    with pytest.raises(InvalidInput, match="lacks prepare.py.*train_template"):
        Workspace(tmp_path / "research", "t1", template)
    assert not (tmp_path / "research").exists()


def test_workspace_path_that_is_a_file(tmp_path: Path, template: Path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidInput, match="is a file; give a directory"):
        Workspace(f, "t1", template)


def test_existing_repo_without_train_py_is_refused_unchanged(tmp_path: Path, template: Path):
    d = tmp_path / "other"
    repo = git.Repo.init(d)
    (d / "README").write_text("hi\n")
    repo.git.add("README")
    repo.git.commit("-m", "x", env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b",
                                    "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"})
    before = state(d)
    with pytest.raises(InvalidInput, match="no train.py or prepare.py at HEAD"):
        Workspace(d, "t1", template)
    assert state(d) == before


def test_checkout_that_would_lose_edits_is_refused_unchanged(ws: Workspace, template: Path):
    launch(ws, "e0001", {"DEPTH": 4})
    ws.keep("e0001")                                 # autoresearch/t1 now differs from main
    ws.repo.git.checkout("-q", "main")
    (ws.path / "train.py").write_text("uncommitted work\n")
    before = state(ws.path)
    with pytest.raises(Conflict, match="Cannot check out autoresearch/t1.*Commit or stash"):
        Workspace(ws.path, "t1", template)
    assert state(ws.path) == before


@pytest.mark.skipif(not (TEMPLATE_DIR / "train.py").is_file() or not (TEMPLATE_DIR / "prepare.py").is_file(),
                    reason="train_template/ is not written yet")
def test_real_template(tmp_path: Path):
    w = Workspace(tmp_path / "research", "real", TEMPLATE_DIR)
    source = w.read_source()
    assert source == (TEMPLATE_DIR / "train.py").read_text()
    sha = w.snapshot("e0001", source, w.head_commit(), "baseline")
    assert w.code_hash_at(sha) == w.code_hash_at("HEAD") == blob_sha(source)
    assert w.harness_hash_at(sha) == w.template_harness_hash()
    constants = list_constants(source)
    if constants:  # whatever they are, a no-op override keeps the code identical
        name, value = next(iter(constants.items()))
        assert apply_overrides(source, {name: value}) == source


# -- reading and resolving ----------------------------------------------------------------------


def test_read_source_default_and_other_files(ws: Workspace):
    assert ws.read_source() == TRAIN
    (ws.path / "variants").mkdir()
    (ws.path / "variants" / "wide.py").write_text("DEPTH = 2\r\n")
    assert ws.read_source("variants/wide.py") == "DEPTH = 2\r\n"  # bytes kept exactly
    (ws.path / "inside.py").symlink_to(ws.path / "variants" / "wide.py")
    assert ws.read_source("inside.py") == "DEPTH = 2\r\n"  # a symlink within the workspace is fine


def test_resolve_commit_forms(ws: Workspace):
    head = ws.head_commit()
    sha = launch(ws, "e0001", {"DEPTH": 4})
    assert ws.resolve_commit(head) == head
    assert ws.resolve_commit(head[:7]) == head
    assert ws.resolve_commit("HEAD") == head
    assert ws.resolve_commit("autoresearch/t1") == head
    assert ws.resolve_commit("e0001") == sha
    assert ws.resolve_commit("e0001~1") == head
    assert ws.resolve_commit(EXPERIMENT_REF_PREFIX + "e0001") == sha


def test_file_at_and_hashes(ws: Workspace):
    head = ws.head_commit()
    assert ws.file_at(head, "sky_task.yaml").startswith("resources:")
    assert ws.code_hash_at(head) == ws.blob_sha(TRAIN) == git_out(ws.path, "hash-object", "train.py")
    assert ws.harness_hash_at(head) == hashlib.sha256(HARNESS.encode()).hexdigest() == ws.template_harness_hash()
    with pytest.raises(NotFound, match="'nope.py' does not exist at commit"):
        ws.file_at(head, "nope.py")


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshot_moves_nothing_but_its_own_ref(ws: Workspace):
    (ws.path / "train.py").write_text(TRAIN.replace("DEPTH = 8", "DEPTH = 6"))  # the agent's edit
    refs, head, index, files = state(ws.path)
    sha = launch(ws, "e0001", {"MATRIX_LR": 0.02}, message="lr 0.02")
    refs2, head2, index2, files2 = state(ws.path)
    assert (head2, index2, files2) == (head, index, files)
    assert refs2.splitlines() == sorted(refs.splitlines() + [f"{sha} {EXPERIMENT_REF_PREFIX}e0001"],
                                        key=lambda line: line.split()[1])
    assert ws.experiment_refs() == {"e0001": sha}
    c = ws.repo.commit(sha)
    assert c.parents[0].hexsha == ws.head_commit() and c.message == "lr 0.02\n\nAutoresearch-Experiment: e0001\n"
    snap = ws.file_at(sha, "train.py")
    assert "DEPTH = 6" in snap and "MATRIX_LR = 0.02" in snap
    assert ws.file_at(sha, "sky_task.yaml") == ws.file_at("HEAD", "sky_task.yaml")
    assert ws.code_hash_at(sha) == blob_sha(snap)


def test_snapshot_ships_a_tampered_harness_unless_told_not_to(ws: Workspace):
    (ws.path / "prepare.py").write_text("EVAL_TOKENS = 1  # cheating\n")
    shipped = ws.snapshot("e0001", TRAIN, ws.head_commit(), "x")
    assert ws.file_at(shipped, "prepare.py") == "EVAL_TOKENS = 1  # cheating\n"
    assert ws.harness_hash_at(shipped) != ws.template_harness_hash()  # the runner will reject it
    clean = ws.snapshot("e0002", TRAIN, ws.head_commit(), "x", include_working_harness=False)
    assert ws.file_at(clean, "prepare.py") == HARNESS


def test_snapshot_with_a_missing_harness_is_refused_unchanged(ws: Workspace):
    (ws.path / "prepare.py").unlink()
    before = state(ws.path)
    with pytest.raises(Conflict, match="prepare.py is missing.*checkout -- prepare.py"):
        ws.snapshot("e0001", TRAIN, ws.head_commit(), "x")
    assert state(ws.path) == before


def test_snapshot_ignores_the_real_index_even_when_locked_or_staged(ws: Workspace):
    (ws.path / "sky_task.yaml").write_text("staged: edit\n")
    ws.repo.git.add("sky_task.yaml")
    (ws.path / ".git" / "index.lock").write_text("")  # a user's git command is running
    try:
        before = state(ws.path)
        sha = ws.snapshot("e0001", TRAIN + "# v\n", ws.head_commit(), "x")
        assert state(ws.path)[1:] == before[1:]
        # from the parent, not the index
        assert ws.file_at(sha, "sky_task.yaml") == "resources:\n  accelerators: H100:1\n"
    finally:
        (ws.path / ".git" / "index.lock").unlink()


def test_snapshot_chain_and_ref_overwrite(ws: Workspace):
    a = launch(ws, "e0001", {"DEPTH": 4})
    b = ws.snapshot("e0002", apply_overrides(ws.file_at(a, "train.py"), {"MATRIX_LR": 0.01}), "e0001",
                    "on top of e0001")
    assert ws.repo.commit(b).parents[0].hexsha == a
    assert list_constants(ws.file_at(b, "train.py")) == {"DEPTH": 4, "MATRIX_LR": 0.01, "WINDOW_PATTERN": "SSSL"}
    # A ref left by a launch the ledger never recorded is replaced (the ledger owns ids).
    c = launch(ws, "e0002", {"DEPTH": 2})
    assert ws.experiment_refs() == {"e0001": a, "e0002": c}


def test_identical_code_has_identical_code_hash(ws: Workspace):
    a = launch(ws, "e0001", {"DEPTH": 8})  # a no-op override: the control
    b = launch(ws, "e0002")
    assert a != b and ws.code_hash_at(a) == ws.code_hash_at(b) == ws.code_hash_at("HEAD")


def test_concurrent_snapshots(ws: Workspace):
    before = state(ws.path)
    shas: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(5):
                exp_id = f"e{k}{j:03d}"
                shas[exp_id] = ws.snapshot(exp_id, TRAIN.replace("DEPTH = 8", f"DEPTH = {k * 10 + j}"),
                                           ws.head_commit(), exp_id)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ws.experiment_refs() == shas and len(set(shas.values())) == 20
    for exp_id, sha in shas.items():
        k, j = int(exp_id[1]), int(exp_id[2:])
        assert list_constants(ws.file_at(sha, "train.py"))["DEPTH"] == k * 10 + j
    assert state(ws.path)[1:] == before[1:]


# -- export --------------------------------------------------------------------------------------


def test_export_writes_the_snapshot_files(ws: Workspace, tmp_path: Path):
    sha = launch(ws, "e0001", {"DEPTH": 3})
    run_dir = tmp_path / "runs" / "e0001" / "a1"
    written = ws.export(sha, run_dir)
    assert sorted(written) == [".gitignore", "prepare.py", "sky_task.yaml", "train.py"]
    assert list_constants((run_dir / "train.py").read_text())["DEPTH"] == 3
    assert (run_dir / "prepare.py").read_text() == HARNESS
    before = state(ws.path)
    with pytest.raises(Conflict, match="already exists and is not empty"):
        ws.export(sha, run_dir)
    assert state(ws.path) == before


def test_export_keeps_the_executable_bit(ws: Workspace, tmp_path: Path):
    (ws.path / "run.sh").write_text("#!/bin/sh\n")
    (ws.path / "run.sh").chmod(0o755)
    ws.repo.git.add("run.sh")
    ws.repo.git.commit("-q", "-m", "script", env=ws._env)
    ws.export("HEAD", tmp_path / "out")
    assert (tmp_path / "out" / "run.sh").stat().st_mode & stat.S_IXUSR


# -- keep ----------------------------------------------------------------------------------------


def test_keep_fast_forwards_and_updates_the_working_tree(ws: Workspace):
    head = ws.head_commit()
    sha = launch(ws, "e0001", {"DEPTH": 4})
    result = ws.keep("e0001")
    assert result == {"branch": "autoresearch/t1", "commit": sha, "previous": head, "fast_forward": True,
                      "updated_files": ["train.py"]}
    assert ws.head_commit() == sha and ws.repo.active_branch.name == "autoresearch/t1"
    assert list_constants((ws.path / "train.py").read_text())["DEPTH"] == 4
    assert git_out(ws.path, "status", "--porcelain") == ""
    assert ws.keep(sha)["updated_files"] == []  # keeping the head again changes nothing


def test_keep_when_the_working_copy_already_holds_the_snapshot(ws: Workspace):
    edited = TRAIN.replace("DEPTH = 8", "DEPTH = 5")
    (ws.path / "train.py").write_text(edited)  # the agent edited train.py, then launched it
    ws.snapshot("e0001", ws.read_source(), ws.head_commit(), "depth 5")
    ws.keep("e0001")
    assert (ws.path / "train.py").read_text() == edited
    assert git_out(ws.path, "status", "--porcelain") == ""


def test_keep_refuses_to_lose_working_edits(ws: Workspace):
    launch(ws, "e0001", {"DEPTH": 4})
    (ws.path / "train.py").write_text(TRAIN + "# unsaved idea\n")
    before = state(ws.path)
    with pytest.raises(Conflict, match="working train.py has edits.*checkout -- train.py"):
        ws.keep("e0001")
    assert state(ws.path) == before


def test_keep_refuses_to_lose_staged_edits(ws: Workspace):
    launch(ws, "e0001", {"DEPTH": 4})
    (ws.path / "train.py").write_text(TRAIN + "# staged\n")
    ws.repo.git.add("train.py")
    (ws.path / "train.py").write_text(TRAIN)
    before = state(ws.path)
    with pytest.raises(Conflict, match="staged changes"):
        ws.keep("e0001")
    assert state(ws.path) == before


def test_keep_of_a_non_descendant_needs_force(ws: Workspace):
    base = ws.head_commit()
    first = launch(ws, "e0001", {"DEPTH": 4})
    second = launch(ws, "e0002", {"MATRIX_LR": 0.02})  # also built on the old head
    ws.keep("e0001")
    before = state(ws.path)
    with pytest.raises(Conflict, match="does not descend from the head.*force=true"):
        ws.keep("e0002")
    assert state(ws.path) == before
    result = ws.keep("e0002", force=True)
    assert result["fast_forward"] is False and result["previous"] == first and ws.head_commit() == second
    consts = list_constants((ws.path / "train.py").read_text())
    assert consts["DEPTH"] == 8 and consts["MATRIX_LR"] == 0.02
    assert git_out(ws.path, "status", "--porcelain") == ""
    assert ws.experiment_refs()["e0001"] == first  # the dropped commit stays reachable
    assert ws.repo.commit(second).parents[0].hexsha == base


def test_keep_with_another_branch_checked_out_is_refused(ws: Workspace):
    launch(ws, "e0001", {"DEPTH": 4})
    ws.repo.git.checkout("-q", "main")
    before = state(ws.path)
    with pytest.raises(Conflict, match="has main checked out, not the session branch autoresearch/t1"):
        ws.keep("e0001")
    assert state(ws.path) == before


def test_keep_updates_a_tampered_harness_too(ws: Workspace):
    (ws.path / "prepare.py").write_text("tampered\n")
    ws.snapshot("e0001", TRAIN, ws.head_commit(), "x")
    assert ws.keep("e0001")["updated_files"] == ["prepare.py"]
    assert git_out(ws.path, "status", "--porcelain") == ""


# -- hostile inputs: each is a clear FleetError and changes nothing ----------------------------


def _outside(ws: Workspace) -> Path:
    secret = ws.path.parent / "secret.py"
    secret.write_text("TOKEN = 'do not read'\n")
    return secret


def _setup_symlink_file(ws: Workspace) -> None:
    (ws.path / "escape.py").symlink_to(_outside(ws))


def _setup_symlink_dir(ws: Workspace) -> None:
    _outside(ws)
    (ws.path / "linkdir").symlink_to(ws.path.parent)


def _setup_files(ws: Workspace) -> None:
    (ws.path / "notes.txt").write_text("DEPTH = 1\n")
    (ws.path / "big.py").write_text("X = 1\n" + "#" * 1_100_000 + "\n")
    (ws.path / "dir.py").mkdir()
    (ws.path / "latin.py").write_bytes("S = 'caf\xe9'\n".encode("latin-1"))
    (ws.path / "loop.py").symlink_to(ws.path / "loop.py")


HOSTILE = [
    # overrides: code, unknown names, absurd values (through read -> rewrite -> snapshot)
    ("code in an int", None, lambda ws: launch(ws, "e1", {"DEPTH": "4; import os"}), "DEPTH is an int"),
    ("os.system in an int", None, lambda ws: launch(ws, "e1", {"DEPTH": "__import__('os').system('id')"}),
     "cannot replace it"),
    ("unknown constant", None, lambda ws: launch(ws, "e1", {"DEPTHS": 4}),
     "Unknown constant 'DEPTHS'.*Did you mean DEPTH"),
    ("lowercase name", None, lambda ws: launch(ws, "e1", {"depth": 4}), "UPPER_CASE"),
    ("dunder name", None, lambda ws: launch(ws, "e1", {"__class__": 1}), "Unknown constant '__class__'"),
    ("name with code", None, lambda ws: launch(ws, "e1", {"DEPTH=1;import os;X": 1}), "Unknown constant"),
    ("huge string", None, lambda ws: launch(ws, "e1", {"WINDOW_PATTERN": "S" * 100_000}), "too long"),
    ("infinite float", None, lambda ws: launch(ws, "e1", {"MATRIX_LR": float("inf")}), "not a finite number"),
    ("too many overrides", None, lambda ws: launch(ws, "e1", {f"X{i}": i for i in range(100)}), "100 overrides given"),
    ("non-literal value", None, lambda ws: launch(ws, "e1", {"DEPTH": print}), "not a literal value"),
    ("absurd factorial", None,
     lambda ws: factorial({"DEPTH": list(range(8)), "MATRIX_LR": list(range(8)), "X": list(range(8)), "Y": [1, 2]}),
     "1024 cells"),
    # source files: traversal, absolute paths, symlinks, wrong kinds of file
    ("path traversal", None, lambda ws: launch(ws, "e1", source="../../etc/passwd"), "leaves the workspace"),
    ("dot-dot py", None, lambda ws: launch(ws, "e1", source="../secret.py"), "leaves the workspace"),
    ("absolute path", None, lambda ws: launch(ws, "e1", source="/etc/passwd"), "absolute path"),
    ("home path", None, lambda ws: launch(ws, "e1", source="~/train.py"), "absolute path"),
    ("drive path", None, lambda ws: launch(ws, "e1", source="C:/train.py"), "absolute path"),
    ("backslashes", None, lambda ws: launch(ws, "e1", source="sub\\..\\..\\x.py"), "backslashes"),
    ("NUL byte", None, lambda ws: launch(ws, "e1", source="a\x00b.py"), "control characters"),
    ("empty name", None, lambda ws: launch(ws, "e1", source=""), "non-empty file name"),
    ("git internals", None, lambda ws: launch(ws, "e1", source=".git/hooks/pre-commit.py"), r"\.git is off limits"),
    ("symlinked file out", _setup_symlink_file, lambda ws: launch(ws, "e1", source="escape.py"),
     "outside the workspace"),
    ("symlinked dir out", _setup_symlink_dir, lambda ws: launch(ws, "e1", source="linkdir/secret.py"),
     "outside the workspace"),
    ("not a .py file", _setup_files, lambda ws: launch(ws, "e1", source="notes.txt"), "not a .py file"),
    ("missing file", None, lambda ws: launch(ws, "e1", source="nope.py"), "No file 'nope.py'.*train.py"),
    ("file over 1 MB", _setup_files, lambda ws: launch(ws, "e1", source="big.py"), "limit is 1000000"),
    ("directory named .py", _setup_files, lambda ws: launch(ws, "e1", source="dir.py"), "not a regular file"),
    ("not UTF-8", _setup_files, lambda ws: launch(ws, "e1", source="latin.py"), "not UTF-8"),
    ("symlink loop", _setup_files, lambda ws: launch(ws, "e1", source="loop.py"), "cannot be resolved|No file"),
    # revisions
    ("option as rev", None, lambda ws: ws.resolve_commit("--help"), "Invalid revision '--help'"),
    ("shell in rev", None, lambda ws: ws.resolve_commit("HEAD; rm -rf /"), "Invalid revision"),
    ("reflog syntax", None, lambda ws: ws.resolve_commit("HEAD@{1}"), "Invalid revision"),
    ("range syntax", None, lambda ws: ws.resolve_commit("main..HEAD"), "Invalid revision"),
    ("path syntax", None, lambda ws: ws.resolve_commit("HEAD:train.py"), "Invalid revision"),
    ("rev not a str", None, lambda ws: ws.resolve_commit(None), "Invalid revision None"),
    ("very long rev", None, lambda ws: ws.resolve_commit("a" * 300), r"Invalid revision 'a+\.\.\.'"),
    ("unknown full sha", None, lambda ws: ws.resolve_commit("deadbeef" * 5),
     "No commit 'deadbeef.*full or at least 4 hex"),
    ("unknown branch", None, lambda ws: ws.resolve_commit("nope/branch"), "No commit 'nope/branch'"),
    ("unknown experiment", None, lambda ws: ws.code_hash_at("e9999"), "No commit 'e9999'"),
    ("snapshot on unknown parent", None, lambda ws: launch(ws, "e1", parent="cafe" * 10), "No commit 'cafe"),
    ("keep unknown", None, lambda ws: ws.keep("feedface"), "No commit 'feedface'"),
    ("keep an option", None, lambda ws: ws.keep("--force"), "Invalid revision"),
    ("file_at traversal", None, lambda ws: ws.file_at("HEAD", "../../etc/passwd"), "leaves the workspace"),
    # experiment ids and snapshot arguments
    ("id escaping refs", None, lambda ws: ws.snapshot("../../heads/main", TRAIN, "HEAD", "x"), "Invalid experiment id"),
    ("id with space", None, lambda ws: ws.snapshot("e 1", TRAIN, "HEAD", "x"), "Invalid experiment id"),
    ("id with option", None, lambda ws: ws.snapshot("-e1", TRAIN, "HEAD", "x"), "Invalid experiment id"),
    ("train.py over 1 MB", None, lambda ws: ws.snapshot("e1", "#" * 1_100_000, "HEAD", "x"), "limit is 1000000"),
    ("lone surrogate", None, lambda ws: ws.snapshot("e1", "X = '\ud800'\n", "HEAD", "x"), "not valid Unicode"),
    ("NUL in message", None, lambda ws: ws.snapshot("e1", TRAIN, "HEAD", "a\x00b"), "without NUL"),
    ("huge message", None, lambda ws: ws.snapshot("e1", TRAIN, "HEAD", "m" * 20_000), "at most 10000 characters"),
]


@pytest.mark.parametrize("case,setup,call,message", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_refused_and_changes_nothing(ws: Workspace, case, setup, call, message):
    if setup is not None:
        setup(ws)  # files the case needs are part of the "before" state
    before = state(ws.path)
    with pytest.raises(FleetError, match=message) as info:
        call(ws)
    assert len(str(info.value)) > 30  # says what was wrong and what to do
    assert state(ws.path) == before


BAD_TAGS = ["../x", "a b", "", "x" * 41, "-x", ".hidden", "a..b", "x.lock", "a/b", "t;rm -rf /", None, "tag\n"]


@pytest.mark.parametrize("tag", BAD_TAGS, ids=[repr(t) for t in BAD_TAGS])
def test_bad_tags_are_refused_before_anything_exists(tmp_path: Path, template: Path, tag):
    with pytest.raises(InvalidInput, match="Invalid session tag.*e.g. 'mar27'"):
        Workspace(tmp_path / "research", tag, template)
    assert not (tmp_path / "research").exists()


def test_bad_tag_on_an_existing_workspace_changes_nothing(ws: Workspace, template: Path):
    before = state(ws.path)
    with pytest.raises(InvalidInput, match="Invalid session tag"):
        Workspace(ws.path, "../main", template)
    assert state(ws.path) == before


@pytest.mark.parametrize("what", ["null", "absent", "tree", "blob"])
def test_export_of_a_full_sha_that_is_no_commit_is_refused(ws: Workspace, tmp_path: Path, what: str):
    """Export takes the ledger's full shas straight from the object database; anything there that
    is not a commit (or nothing at all) is a clear NotFound and no run directory is written."""
    head = ws.repo.head.commit
    sha = {"null": "0" * 40, "absent": "deadbeef" * 5, "tree": head.tree.hexsha,
           "blob": head.tree["train.py"].hexsha}[what]
    dest = tmp_path / "run"
    with pytest.raises(NotFound, match="No commit"):
        ws.export(sha, dest)
    assert not dest.exists() or not any(dest.iterdir())
    assert ws.export(head.hexsha, tmp_path / "ok")  # the fast path still exports a real commit
