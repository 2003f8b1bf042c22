"""Keeping an experiment: the session branch moves to its snapshot (a compare-and-swap on the
ref: fast-forward, or a reset with force) and the working tree follows, file by file, without
ever losing an edit that is in neither the old head nor the kept commit. Part of `Workspace`
(its lock, repo and paths)."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import git

from mcp_server.domain.errors import Conflict
from mcp_server.store.gitutil import LITERAL_PATHSPECS as _LITERAL
from mcp_server.store.gitutil import blob_sha, is_ancestor


class KeepMixin:
    repo: git.Repo
    path: Path
    branch: str
    _lock: threading.RLock

    if TYPE_CHECKING:  # pragma: no cover - Workspace's
        def resolve_commit(self, rev: str) -> str: ...

    def keep(self, commit: str, force: bool = False) -> dict[str, Any]:
        """Move the session branch to `commit` and update the working tree to match.

        Fast-forwards when `commit` descends from the branch head (the normal case: a snapshot
        of the head). Otherwise the branch has moved since the snapshot was taken; that needs
        force=True, which resets the branch (the commits it drops stay reachable through their
        experiment refs). Refuses when a working-tree or staged edit to a file that changes
        would be lost, unless that edit already equals the kept version."""
        with self._lock:
            target = self.resolve_commit(commit)
            repo = self.repo
            if repo.head.is_detached or repo.head.ref.name != self.branch:
                current = "a detached HEAD" if repo.head.is_detached else repo.head.ref.name
                raise Conflict(
                    f"The workspace has {current} checked out, not the session branch {self.branch}; "
                    f"check it out (git -C {self.path} checkout {self.branch}) and keep again."
                )
            head = repo.heads[self.branch].commit.hexsha
            result = {"branch": self.branch, "commit": target, "previous": head, "fast_forward": True,
                      "updated_files": []}
            if target == head:
                return result
            fast_forward = is_ancestor(repo, head, target)
            if not fast_forward and not force:
                raise Conflict(
                    f"Commit {target[:12]} does not descend from the head of {self.branch} ({head[:12]}): the branch "
                    "moved after this snapshot was taken (another experiment was kept?). Keeping it would drop the "
                    "branch's newer commits. Either relaunch the change on top of the current head and keep that, or "
                    "keep with force=true to reset the branch to it (dropped commits stay in their experiment refs)."
                )
            changes = self._file_changes(head, target)
            self._refuse_lost_edits(changes, target)
            g = repo.git
            # Compare-and-swap on the branch: fails if something else moved it meanwhile.
            g.update_ref("-m", f"autoresearch: keep {target[:12]}", f"refs/heads/{self.branch}", target, head)
            paths = [c[0] for c in changes]
            if paths:
                g.reset("-q", target, "--", *paths, env=_LITERAL)
                for path, _, new_sha, new_mode in changes:
                    self._write_working_file(path, new_sha, new_mode)
                try:
                    g.update_index("-q", "--refresh")
                except git.GitCommandError:
                    pass  # only refreshes stat data; `git status` would redo it
            result.update(fast_forward=fast_forward, updated_files=paths)
            return result

    def _file_changes(self, old: str, new: str) -> list[tuple[str, str | None, str | None, int | None]]:
        """(path, old blob, new blob, new mode) for every file that differs between two commits."""
        out = self.repo.git.diff_tree("-r", "-z", "--no-renames", "--raw", old, new)
        fields = out.split("\0")
        changes = []
        for i in range(0, len(fields) - 1, 2):
            meta, path = fields[i], fields[i + 1]
            if not meta.startswith(":"):
                continue
            _, new_mode, old_sha, new_sha, _status = meta[1:].split(" ")
            zero = "0" * 40
            changes.append((path, None if old_sha == zero else old_sha,
                            None if new_sha == zero else new_sha, None if new_sha == zero else int(new_mode, 8)))
        return changes

    def _refuse_lost_edits(self, changes: list[tuple[str, str | None, str | None, int | None]], target: str) -> None:
        staged = {}
        if changes:
            out = self.repo.git.ls_files("--stage", "-z", "--", *[c[0] for c in changes], env=_LITERAL)
            for entry in filter(None, out.split("\0")):
                meta, path = entry.split("\t", 1)
                staged[path] = meta.split(" ")[1]
        for path, old_sha, new_sha, _ in changes:
            allowed = {old_sha, new_sha}
            working = self.path / path
            if working.is_symlink():
                now = blob_sha(os.readlink(working).encode())
            elif working.is_file():
                now = blob_sha(working.read_bytes())
            else:
                now = None
            if now not in allowed:
                raise Conflict(
                    f"The working {path} has edits that are in neither the branch head nor {target[:12]}; "
                    "keeping would overwrite them. If they are already launched as an experiment they are safe in "
                    f"its snapshot: restore the file (git -C {self.path} checkout -- {path}) and keep again; "
                    "otherwise launch or save them first."
                )
            if staged.get(path) not in allowed:
                raise Conflict(
                    f"{path} has staged changes in the workspace index that keeping {target[:12]} would lose; "
                    f"commit or unstage them (git -C {self.path} restore --staged {path}) and keep again."
                )

    def _write_working_file(self, path: str, sha: str | None, mode: int | None) -> None:
        target = self.path / path
        if sha is None:
            target.unlink(missing_ok=True)
            return
        data = self.repo.odb.stream(bytes.fromhex(sha)).read()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic replace: a reader (or a crash) never sees half a train.py.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o755 if mode == 0o100755 else 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
