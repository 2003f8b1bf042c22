"""Small git helpers the workspace modules share: blob ids, ancestry, git's error text, UTF-8."""

from __future__ import annotations

import hashlib
from typing import cast

import git

from mcp_server.domain.errors import InvalidInput

# Literal pathspecs: a tracked file named `*.py` must not act as a glob.
LITERAL_PATHSPECS = {"GIT_LITERAL_PATHSPECS": "1"}


def blob_sha(content: str | bytes) -> str:
    """The git blob id of `content` (text is stored as UTF-8): equal code => equal hash."""
    data = _utf8(content, "content") if isinstance(content, str) else content
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInput(f"{what} is not valid Unicode text ({e.reason} at position {e.start}); "
                           "send plain UTF-8 text.") from None


def _git_error(e: git.GitCommandError) -> str:
    text = (e.stderr or e.stdout or str(e)).strip()
    text = text.removeprefix("stderr:").strip().strip("'").strip()
    return " ".join(text.split())  # one line: the message is read by a model


def is_ancestor(repo: git.Repo, ancestor: str, rev: str) -> bool:
    """`git merge-base --is-ancestor ancestor rev`. GitPython's stubs ask for Commit objects, but
    `Repo.is_ancestor` hands both straight to git, so a sha or ref string works (and needs no lookup)."""
    return repo.is_ancestor(cast(git.Commit, ancestor), cast(git.Commit, rev))

