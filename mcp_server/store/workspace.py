"""The research workspace: a git repository holding train.py, the harness and the session branch.

Layout and rules (docs/contracts.md section 3):
* Session branch `autoresearch/<tag>`; the agent edits `<workspace>/train.py` on it.
* Each experiment is a snapshot commit on the hidden ref `refs/autoresearch/experiments/<id>`.
  Snapshots are built with a temporary index (GIT_INDEX_FILE), so the real index, HEAD, the
  branch and the working tree never move when an experiment is launched.
* Keep moves the branch to a snapshot and updates the working tree, never losing edits.
* Engine state lives in `<workspace>/.autoresearch/`, which git ignores.

Every agent-supplied string (tag, revision, file name, experiment id) is validated here before
it reaches git, and git is only ever called with argument lists (gitpython), never a shell.

(Over 400 lines on purpose: one object owns the repo and its lock, and the validators sit next
to the git calls they guard. Keeping is in `workspace_keep.py`, shared git helpers in `gitutil.py`.)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any

import git
from gitdb.base import IStream

from mcp_server.domain.errors import Conflict, InvalidInput, NotFound
from mcp_server.domain.ids import TAG_RE
from mcp_server.domain.limits import MAX_MESSAGE_CHARS, MAX_SOURCE_BYTES
from mcp_server.domain.paths import STATE_DIR
from mcp_server.store.gitutil import LITERAL_PATHSPECS as _LITERAL
from mcp_server.store.gitutil import _git_error, _utf8, blob_sha, is_ancestor
from mcp_server.store.workspace_keep import KeepMixin

TRAIN = "train.py"
HARNESS = "prepare.py"
BRANCH_PREFIX = "autoresearch/"
EXPERIMENT_REF_PREFIX = "refs/autoresearch/experiments/"
TEMPLATE_BRANCH = "main"
DEFAULT_IDENTITY = ("autoresearch-fleet", "autoresearch-fleet@localhost")

TAG_PATTERN = TAG_RE
EXPERIMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# A revision: a hex sha, or a ref name, optionally followed by ~N / ^N. No spaces, no leading
# dash (it would read as an option), no `..` ranges, no `@{...}` reflog syntax, no `:path`.
REV_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}(?:[~^][0-9]{0,3}){0,8}$")
FULL_SHA = re.compile(r"[0-9a-f]{40}")


def _ref_name_ok(name: str) -> bool:
    """The parts of git's ref-name rules the patterns above do not already enforce."""
    return not (
        ".." in name or "//" in name or name.endswith((".", "/", ".lock"))
        or any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))
    )


def validate_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag) or not _ref_name_ok(tag) or tag.startswith("-"):
        raise InvalidInput(
            f"Invalid session tag {tag!r}: use 1-40 characters from A-Z a-z 0-9 . _ - (not starting with '.' or '-', "
            "no '..', not ending in '.lock'), e.g. 'mar27' or 'h100-sweep'. The branch will be autoresearch/<tag>."
        )
    return tag


def validate_experiment_id(exp_id: Any) -> str:
    if not isinstance(exp_id, str) or not EXPERIMENT_ID_PATTERN.fullmatch(exp_id):
        raise InvalidInput(
            f"Invalid experiment id {exp_id!r}: 1-64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit "
            "(ids look like 'e0042')."
        )
    return exp_id


class Workspace(KeepMixin):
    """Opens (or creates from the template) the research repo and checks out the session branch."""

    def __init__(self, path: Path, tag: str, template_dir: Path, harness: tuple[str, ...] = (HARNESS,)) -> None:
        self.tag = validate_tag(tag)
        #: the task's harness files (domain/task.py): present at the session start, shipped from the
        #: working tree in every snapshot (so an edit is rejected by the runner, not hidden)
        self.harness = tuple(harness)
        self.branch = BRANCH_PREFIX + tag
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInput(f"Workspace path must be a filesystem path, got {type(path).__name__}.")
        self.path = Path(path).expanduser().absolute()
        self.template_dir = Path(template_dir).expanduser().absolute()
        # Every git call takes this lock: the engine snapshots from several threads, and a
        # gitpython Repo (with its persistent cat-file processes) is not thread-safe.
        self._lock = threading.RLock()
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInput(f"Workspace path {self.path} is a file; give a directory (it is created if missing).")
        self.repo = self._open() or self._create()
        self._env = self._identity_env()
        self._checkout_session_branch()
        self._root = self.path.resolve()

    # -- creation ----------------------------------------------------------------------------

    def _open(self) -> git.Repo | None:
        if not (self.path / ".git").exists():
            return None  # not a repository of its own (even if a parent directory is one)
        try:
            repo = git.Repo(self.path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            return None
        if repo.bare:
            raise InvalidInput(f"{self.path} is a bare git repository; the workspace needs a working tree.")
        return repo

    def _template_files(self) -> list[Path]:
        files = [self.template_dir / TRAIN, self.template_dir / HARNESS]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InvalidInput(
                f"The training template {self.template_dir} lacks {', '.join(missing)}; point template_dir at a "
                "folder holding train.py and prepare.py (the project's train_template/)."
            )
        return files + sorted(p for p in self.template_dir.glob("*.yaml") if p.is_file())

    def _create(self) -> git.Repo:
        """git init + the template's files + .gitignore, committed as "template"."""
        files = self._template_files()  # validated before anything is created
        if self.path.exists():
            clash = [n for n in [f.name for f in files] + [".gitignore"] if (self.path / n).exists()]
            if clash:
                raise Conflict(
                    f"{self.path} is not a git repository but already holds {', '.join(clash)}; refusing to overwrite "
                    "them. Choose an empty or new workspace directory, or `git init` this one and commit its files."
                )
        self.path.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(self.path, initial_branch=TEMPLATE_BRANCH)
        for f in files:
            shutil.copyfile(f, self.path / f.name)
        (self.path / ".gitignore").write_text(f"{STATE_DIR}/\n")
        names = [f.name for f in files] + [".gitignore"]
        self.repo = repo
        repo.git.add("--", *names, env=_LITERAL)
        repo.git.commit("-q", "--no-verify", "-m", "template", env=self._identity_env())
        return repo

    def _identity_env(self) -> dict[str, str]:
        """Commits need an author; use the user's git identity, else a fixed one (a CI machine
        or a fresh cloud box has none and `git commit` would fail)."""
        reader = self.repo.config_reader()
        env: dict[str, str] = {}
        if not (os.environ.get("GIT_AUTHOR_NAME") or reader.get_value("user", "name", default="")):
            env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = DEFAULT_IDENTITY[0]
        if not (os.environ.get("GIT_AUTHOR_EMAIL") or reader.get_value("user", "email", default="")):
            env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = DEFAULT_IDENTITY[1]
        return env

    def _checkout_session_branch(self) -> None:
        repo = self.repo
        if not repo.head.is_valid():
            raise InvalidInput(
                f"{self.path} is a git repository without any commit; commit train.py and prepare.py first, "
                "or use a new directory (it is created from the template)."
            )
        exists = self.branch in [h.name for h in repo.heads]
        start = repo.heads[self.branch].commit if exists else repo.head.commit
        missing = [n for n in (TRAIN, *self.harness) if not self._tree_has_blob(start.tree, n)]
        if missing:
            raise InvalidInput(
                f"The workspace repo {self.path} has no {' or '.join(missing)} at "
                f"{self.branch if exists else 'HEAD'}; use a new directory (created from the template) or add them."
            )
        on_branch = not repo.head.is_detached and repo.head.ref.name == self.branch
        if not on_branch:
            try:
                if exists:
                    repo.git.checkout("-q", self.branch, "--")
                else:
                    repo.git.checkout("-q", "-b", self.branch, "--")
            except git.GitCommandError as e:
                raise Conflict(
                    f"Cannot check out {self.branch} in {self.path}: {_git_error(e)}. Commit or stash the local "
                    "changes there, then start again."
                ) from None
        self._ignore_state_dir()

    def _ignore_state_dir(self) -> None:
        """Existing repos may lack our .gitignore line; .git/info/exclude ignores the state dir
        without touching tracked files."""
        exclude = Path(self.repo.git_dir) / "info" / "exclude"
        line = f"{STATE_DIR}/"
        current = exclude.read_text() if exclude.exists() else ""
        if line not in current.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text(current + ("" if current.endswith("\n") or not current else "\n") + line + "\n")

    # -- reading -------------------------------------------------------------------------------

    def head_commit(self) -> str:
        """Full sha of the session branch's head."""
        with self._lock:
            return self.repo.heads[self.branch].commit.hexsha

    def _relative_path(self, name: Any, what: str = "source") -> PurePosixPath:
        """A path inside the workspace, as given by the agent: relative, no `..`, not in .git."""
        hint = "Give a path relative to the workspace root, e.g. 'train.py' or 'variants/wide.py'."
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"{what} must be a non-empty file name. {hint}")
        if len(name) > 255 or any(ord(c) < 32 for c in name) or "\\" in name:
            raise InvalidInput(f"{what} {name[:80]!r} is not a usable file name "
                               f"(too long, control characters or backslashes). {hint}")
        if name.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", name):
            raise InvalidInput(f"{what} {name!r} is an absolute path; "
                               f"files must be inside the workspace {self.path}. {hint}")
        rel = PurePosixPath(name)
        if ".." in rel.parts:
            raise InvalidInput(f"{what} {name!r} leaves the workspace ('..' is not allowed). {hint}")
        if not rel.parts or rel.parts[0] == ".git":
            raise InvalidInput(f"{what} {name!r} is not a workspace file (.git is off limits). {hint}")
        return rel

    def _workspace_py_files(self) -> str:
        found = sorted(p.name for p in self.path.glob("*.py") if p.is_file())
        return ", ".join(found[:10]) or "(none)"

    def read_source(self, source: str | None = None) -> str:
        """The text that becomes train.py in a snapshot: the working-tree train.py, or another
        .py file inside the workspace (symlinks may not lead outside it)."""
        if source is None:
            source = TRAIN
        rel = self._relative_path(source)
        if rel.suffix != ".py":
            raise InvalidInput(f"source {source!r} is not a .py file; "
                               "give a Python file in the workspace, e.g. 'train.py'.")
        full = self.path / rel
        try:
            resolved = full.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(
                f"No file {source!r} in the workspace {self.path}. "
                f"Python files at its root: {self._workspace_py_files()}."
            ) from None
        except (OSError, RuntimeError) as e:  # symlink loops
            raise InvalidInput(f"source {source!r} cannot be resolved ({e}); give a regular file.") from None
        if not resolved.is_relative_to(self._root) or resolved.is_relative_to(self._root / ".git"):
            raise InvalidInput(
                f"source {source!r} resolves to {resolved}, outside the workspace {self._root} (a symlink?). "
                "Copy the file into the workspace instead."
            )
        if not resolved.is_file():
            raise InvalidInput(f"source {source!r} is not a regular file; give a .py file.")
        size = resolved.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise InvalidInput(f"source {source!r} is {size} bytes; the limit is {MAX_SOURCE_BYTES} (1 MB).")
        try:
            return resolved.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"source {source!r} is not UTF-8 text; save it as UTF-8.") from None

    def resolve_commit(self, rev: str) -> str:
        """Full sha of a commit named by sha, short sha, ref name (optionally ~N/^N), or
        experiment id (its snapshot ref wins over a short sha that reads the same)."""
        hint = "Give a commit sha (full or at least 4 hex digits), a branch such as " \
               f"{self.branch}, HEAD, or an experiment id with a snapshot."
        if (not isinstance(rev, str) or not REV_PATTERN.fullmatch(rev)
                or not _ref_name_ok(re.sub(r"[~^][0-9]*", "", rev))):
            shown = rev[:60] + "..." if isinstance(rev, str) and len(rev) > 60 else rev
            raise InvalidInput(f"Invalid revision {shown!r}: not a sha or ref name. {hint}")
        with self._lock:
            parts = re.fullmatch(r"(.*?)((?:[~^][0-9]*)*)", rev)
            assert parts is not None  # matches any newline-free string, and REV_PATTERN allows no newline
            name, suffix = parts.groups()  # e0003~1 works too
            if EXPERIMENT_ID_PATTERN.fullmatch(name) and self._rev_parse(EXPERIMENT_REF_PREFIX + name):
                sha = self._rev_parse(EXPERIMENT_REF_PREFIX + rev)
                if sha:
                    return sha
            sha = self._rev_parse(rev)
        if not sha:
            raise NotFound(f"No commit {rev!r} in the workspace (unknown or ambiguous). {hint}")
        return sha

    def _rev_parse(self, rev: str) -> str | None:
        try:
            return self.repo.git.rev_parse("--verify", "--quiet", "--end-of-options", rev + "^{commit}")
        except git.GitCommandError:
            return None

    def _commit(self, rev: str) -> git.Commit:
        if isinstance(rev, str) and FULL_SHA.fullmatch(rev):
            # A full sha (what the ledger stores, e.g. for every run directory's export) needs no
            # `git rev-parse` subprocesses: look it up in the object database directly.
            try:
                info = self.repo.odb.info(bytes.fromhex(rev))
            except (ValueError, git.BadName, git.BadObject):
                info = None  # missing: resolve_commit below says so in words
            if info is not None and info.type == b"commit":
                return git.Commit(self.repo, info.binsha)
        return self.repo.commit(self.resolve_commit(rev))

    @staticmethod
    def _tree_has_blob(tree: git.Tree, path: str) -> bool:
        try:
            return tree[path].type == "blob"
        except KeyError:
            return False

    def _blob_at(self, commit: str, path: str) -> git.Blob:
        rel = self._relative_path(path, "path")
        with self._lock:
            c = self._commit(commit)
            try:
                obj = c.tree[str(rel)]
            except KeyError:
                raise NotFound(f"{path!r} does not exist at commit {c.hexsha[:12]}.") from None
        if obj.type != "blob":
            raise InvalidInput(f"{path!r} at commit {c.hexsha[:12]} is a {obj.type}, not a file.")
        return obj

    def file_at(self, commit: str, path: str) -> str:
        """Text of a file at a commit."""
        blob = self._blob_at(commit, path)
        with self._lock:
            data = blob.data_stream.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{path!r} is not UTF-8 text.") from None

    def blob_sha(self, content: str) -> str:
        if not isinstance(content, str):
            raise InvalidInput(f"content must be text, got {type(content).__name__}.")
        return blob_sha(content)

    def code_hash_at(self, commit: str) -> str:
        """Blob sha of train.py at a commit (the experiment's code identity)."""
        return self._blob_at(commit, TRAIN).hexsha

    def harness_hash_at(self, commit: str, name: str = HARNESS) -> str:
        """sha256 of a harness file (prepare.py) at a commit (what the runner checks, docs/contracts.md)."""
        blob = self._blob_at(commit, name)
        with self._lock:
            return hashlib.sha256(blob.data_stream.read()).hexdigest()

    def template_harness_hash(self) -> str:
        """sha256 of the template's prepare.py: the harness every run must match."""
        return hashlib.sha256((self.template_dir / HARNESS).read_bytes()).hexdigest()

    def experiment_refs(self) -> dict[str, str]:
        """exp_id -> snapshot sha, for every experiment ref."""
        with self._lock:
            out = self.repo.git.for_each_ref("--format=%(objectname) %(refname)", EXPERIMENT_REF_PREFIX)
        refs = {}
        for line in out.splitlines():
            sha, name = line.split(" ", 1)
            refs[name.removeprefix(EXPERIMENT_REF_PREFIX)] = sha
        return refs

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(
        self,
        exp_id: str,
        train_source: str,
        parent_commit: str,
        message: str,
        include_working_harness: bool = True,
    ) -> str:
        """Commit `train_source` as train.py on top of `parent_commit` and point
        refs/autoresearch/experiments/<exp_id> at it. Nothing else moves: the commit is built
        in a temporary index. With include_working_harness, the working tree's prepare.py goes
        in too, so an edited harness is shipped and rejected by the runner's hash check rather
        than silently replaced by the committed one.

        The ledger owns experiment ids: a ref left by a launch that never reached the ledger
        (a crash in between) is overwritten."""
        validate_experiment_id(exp_id)
        if not isinstance(train_source, str):
            raise InvalidInput(f"train_source must be the text of train.py, got {type(train_source).__name__}.")
        train_bytes = _utf8(train_source, "train_source")
        if len(train_bytes) > MAX_SOURCE_BYTES:
            raise InvalidInput(f"train.py would be {len(train_bytes)} bytes; the limit is {MAX_SOURCE_BYTES} (1 MB).")
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS or "\0" in message:
            raise InvalidInput(f"The commit message must be text of at most {MAX_MESSAGE_CHARS} characters "
                               "without NUL bytes.")
        # The trailer names the experiment in the commit itself (and keeps two snapshots of the
        # same code made in the same second from collapsing into one commit).
        message = f"{message.strip() or 'experiment'}\n\nAutoresearch-Experiment: {exp_id}\n"
        harness_files: list[tuple[str, bytes]] = []
        if include_working_harness:
            for name in self.harness:
                harness = self.path / name
                if harness.is_symlink() or not harness.is_file():
                    raise Conflict(
                        f"The workspace's {name} is missing or not a regular file; it is the fixed harness. Restore it "
                        f"(git -C {self.path} checkout -- {name}) and launch again."
                    )
                harness_files.append((name, harness.read_bytes()))

        with self._lock:
            parent = self._commit(parent_commit)
            with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
                env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
                g = self.repo.git
                g.read_tree(parent.tree.hexsha, env=env)
                files = [(TRAIN, train_bytes), *harness_files]
                for name, data in files:
                    sha = self._store_blob(data)
                    mode = self._mode_in(parent.tree, name)
                    g.update_index("--add", "--cacheinfo", f"{mode:o},{sha},{name}", env=env)
                tree = g.write_tree(env=env)
            sha = g.commit_tree(tree, "-p", parent.hexsha, "-m", message, env=self._env)
            g.update_ref("-m", f"autoresearch: snapshot {exp_id}", EXPERIMENT_REF_PREFIX + exp_id, sha)
            return sha

    def _store_blob(self, data: bytes) -> str:
        stream = self.repo.odb.store(IStream(git.Blob.type, len(data), BytesIO(data)))
        sha = stream.hexsha
        return sha.decode() if isinstance(sha, bytes) else sha

    @staticmethod
    def _mode_in(tree: git.Tree, name: str) -> int:
        try:
            mode = tree[name].mode
        except KeyError:
            return 0o100644
        return mode if mode in (0o100644, 0o100755) else 0o100644

    def export(self, commit: str, dest: Path) -> list[str]:
        """Write the commit's files (train.py, prepare.py, yaml, ...) into `dest`, a new or
        empty run directory. Symlinks and submodules in the tree are skipped: a run directory
        holds plain files only. Returns the relative paths written."""
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise Conflict(f"Run directory {dest} already exists and is not empty; export needs a fresh directory.")
        with self._lock:
            c = self._commit(commit)
            # (traverse() yields objects, not tuples, without as_edge; type "blob" is exactly git.Blob)
            entries = [(str(item.path), item.mode, item.data_stream.read())
                       for item in c.tree.traverse()
                       if isinstance(item, git.Blob) and item.mode in (0o100644, 0o100755)]
        dest.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        for rel, mode, data in entries:
            parts = PurePosixPath(rel).parts
            if ".." in parts or rel.startswith("/"):
                continue  # a crafted tree; git itself refuses such names
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            if mode == 0o100755:
                target.chmod(0o755)
            written.append(rel)
        return written

    def contains(self, ancestor: str, rev: str) -> bool:
        """True when commit `ancestor` is `rev` or one of its ancestors (under the workspace lock)."""
        with self._lock:
            return is_ancestor(self.repo, ancestor, rev)

    def drop_experiment_ref(self, exp_id: str) -> None:
        """Delete an experiment's snapshot ref (a launch that failed before it was recorded)."""
        exp_id = validate_experiment_id(exp_id)
        with self._lock:
            self.repo.git.update_ref("-d", EXPERIMENT_REF_PREFIX + exp_id)

    def close(self) -> None:
        """Stop gitpython's helper processes."""
        with self._lock:
            self.repo.close()
