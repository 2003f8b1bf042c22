"""The fixed harness (train_template/prepare.py): hash, tokenizer, packing, and data preparation
for real: the demo corpus, a local folder, and climbmix-style parquet shards downloaded over HTTP
from a server on 127.0.0.1 that cuts a transfer off half-way."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "train_template"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_PROFILE="cpu")
    env.update(extra)
    return env


def load_prepare(monkeypatch: pytest.MonkeyPatch, path: Path = TEMPLATE / "prepare.py", **env: str):
    """A fresh import of prepare.py under the given environment (it reads the environment at import)."""
    for key in [k for k in os.environ if k.startswith("AUTORESEARCH_")]:
        monkeypatch.delenv(key)
    for key, value in clean_env(**env).items():
        if key.startswith("AUTORESEARCH_"):
            monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("prepare", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "prepare", module)
    spec.loader.exec_module(module)
    return module


def run_prepare(cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TEMPLATE / "prepare.py"), *args], cwd=TEMPLATE,
                          env=clean_env(AUTORESEARCH_CACHE=str(cache), **env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------
# harness hash

def test_harness_hash_is_sha256_of_the_file_and_changes_with_it(tmp_path, monkeypatch):
    from mcp_server.runtime import runner

    original = load_prepare(monkeypatch)
    assert original.harness_hash() == hashlib.sha256((TEMPLATE / "prepare.py").read_bytes()).hexdigest()

    copy = tmp_path / "same" / "prepare.py"
    copy.parent.mkdir()
    shutil.copyfile(TEMPLATE / "prepare.py", copy)
    assert load_prepare(monkeypatch, copy).harness_hash() == original.harness_hash()  # content, not path

    edited = tmp_path / "edited" / "prepare.py"
    edited.parent.mkdir()
    source = copy.read_text()
    edited.write_text(source.replace("EVAL_TOKENS = PROFILES", "EVAL_TOKENS = 1 + PROFILES", 1))
    assert edited.read_text() != source
    changed = load_prepare(monkeypatch, edited).harness_hash()
    assert changed != original.harness_hash()
    # the runner (stdlib only) computes the same thing
    assert runner.harness_hash(copy) == original.harness_hash()
    assert runner.harness_hash(edited) == changed


# ---------------------------------------------------------------------------
# tokenizer and packing, on the session's prepared demo corpus

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "hello world",
    "  leading and trailing spaces  \n\n\ttabs\r\nand CRLF\n",
    "Unicode: naïve café, Ελληνικά, 日本語のテキスト, emoji 🙂🚀, math ∑∫√",
    "numbers 1234567890 3.14159 -42 1e-10",
    "",
    "a" * 500,
    "<|bos|> is only special when the harness says so",
]


def test_tokenizer_round_trips_and_byte_table_is_consistent(prepared_cache, monkeypatch):
    prep = load_prepare(monkeypatch, AUTORESEARCH_CACHE=str(prepared_cache))
    tok = prep.Tokenizer.load()
    assert tok.vocab_size == prep.VOCAB_SIZE == 1024
    assert tok.bos_token_id == tok.vocab_size - 1
    token_bytes = np.load(prep.data_dir() / "token_bytes.npy")
    assert token_bytes.shape == (tok.vocab_size,)
    assert token_bytes[tok.bos_token_id] == 0 and (token_bytes[:-1] > 0).all()
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.bos_token_id not in ids  # ordinary text never produces the special token
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))  # the bpb denominator is exact
        assert tok.encode(text, prepend_bos=True) == [tok.bos_token_id] + ids
    # the trained BPE compresses the corpus it was trained on (several bytes per token)
    verse = "And God said, Let there be light: and there was light."
    assert len(verse.encode()) / len(tok.encode(verse)) > 2.5


def test_packed_rows_are_whole_bos_first_documents_without_padding(prepared_cache, monkeypatch):
    prep = load_prepare(monkeypatch, AUTORESEARCH_CACHE=str(prepared_cache))
    bos = prep.Tokenizer.load().bos_token_id
    (tokens, offsets), = prep._load_split("train")
    docs = {}
    for i in range(len(offsets) - 1):
        doc = tokens[offsets[i]:offsets[i + 1]]
        docs.setdefault(tuple(doc[:4]), []).append(doc)

    gen = prep.packed_rows(16, "train", seed=1)
    rows = np.concatenate([next(gen)[0] for _ in range(4)])
    assert rows.shape == (64, prep.MAX_SEQ_LEN + 1)
    assert (rows[:, 0] == bos).all()
    assert rows.max() < 1024  # every position holds a real token: no padding
    n_segments = 0
    for row in rows:
        starts = np.flatnonzero(row == bos).tolist() + [len(row)]
        for j, (a, b) in enumerate(zip(starts, starts[1:], strict=False)):
            seg = row[a:b]
            last = j == len(starts) - 2
            if len(seg) < 4:
                assert last  # a stub of a cropped document can only end a row
                continue
            matches = [d for d in docs.get(tuple(seg[:4]), []) if np.array_equal(d[:len(seg)], seg)]
            assert matches, "a packed segment is not the start of a training document"
            assert last or any(len(d) == len(seg) for d in matches), "only a row's last document may be cropped"
            n_segments += 1
    assert n_segments > 64  # rows hold several documents

    again = prep.packed_rows(16, "train", seed=1)
    assert np.array_equal(next(again)[0], rows[:16])  # the seed fixes the data order
    other = prep.packed_rows(16, "train", seed=2)
    assert not np.array_equal(next(other)[0], rows[:16])


def test_validation_rows_are_pinned(prepared_cache, monkeypatch):
    prep = load_prepare(monkeypatch, AUTORESEARCH_CACHE=str(prepared_cache))
    by_one = prep.packed_rows(1, "val", seed=1)
    by_three = prep.packed_rows(3, "val", seed=7)
    rows_one = np.concatenate([next(by_one)[0] for _ in range(6)])
    rows_three = np.concatenate([next(by_three)[0] for _ in range(2)])
    assert np.array_equal(rows_one, rows_three)  # independent of batch size and seed
    # one pass over the split covers what evaluate_bpb scores without wrapping around
    rows, epoch = next(prep.packed_rows(prep.EVAL_TOKENS // prep.MAX_SEQ_LEN, "val"))
    assert epoch == 0
    # the validation split is the pinned tail of the corpus (Hebrews .. Revelation), never trained on
    tok = prep.Tokenizer.load()
    text = tok.decode(rows.ravel())
    assert "Hebrews 1." in text and "Revelation 2" in text and "Genesis" not in text
    (train_tokens, _), = prep._load_split("train")
    train_text = tok.decode(train_tokens)
    assert "Philemon 1." in train_text and "Hebrews 1." not in train_text and "Revelation" not in train_text


def test_demo_prepare_is_idempotent(prepared_cache):
    before = snapshot(prepared_cache)
    assert any(name.endswith("meta.json") for name in before)
    proc = run_prepare(prepared_cache, AUTORESEARCH_DATA="demo")
    assert proc.returncode == 0, proc.stderr
    assert "ready:" in proc.stdout and "tokenizer:" not in proc.stdout
    assert snapshot(prepared_cache) == before  # nothing rewritten


# ---------------------------------------------------------------------------
# climbmix-style shards over real HTTP

WORDS = ["".join(random.Random(i).choice(["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "xa", "zu", "de"])
                 for _ in range(1 + i % 4)) for i in range(3000)]


def make_shard(seed: int, n_docs: int) -> bytes:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + "." for _ in range(n_docs)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, row_group_size=64)
    return buf.getvalue()


class ShardServer:
    """Serves shard files on 127.0.0.1 with HTTP Range support. The first request for each name in
    `cut_once` gets the full Content-Length but only half the body before the connection closes."""

    def __init__(self, files: dict[str, bytes], cut_once=(), ranges=True):
        self.files, self.cut_once, self.ranges = files, set(cut_once), ranges
        self.requests: list[tuple[str, str | None, int, int]] = []  # (name, Range header, status, body bytes sent)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                if name not in server.files:
                    server.requests.append((name, rng, 404, 0))
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if server.ranges and m:
                    start = int(m.group(1))
                    if start >= len(data):
                        server.requests.append((name, rng, 416, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                status = 206 if start else 200
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut_once:
                    server.cut_once.discard(name)
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                server.requests.append((name, rng, status, len(body)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/climbmix"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def shards() -> dict[str, bytes]:
    return {"shard_00000.parquet": make_shard(0, 500), "shard_00001.parquet": make_shard(1, 500),
            "shard_06542.parquet": make_shard(2, 300)}


def test_climbmix_download_resumes_after_a_cut_and_prepare_is_idempotent(tmp_path, shards, monkeypatch):
    cache = tmp_path / "cache"
    raw = cache / "climbmix" / "raw"
    raw.mkdir(parents=True)
    # a previous `python prepare.py` was killed while downloading shard 0: 1000 bytes are on disk
    (raw / "shard_00000.parquet.part").write_bytes(shards["shard_00000.parquet"][:1000])
    server = ShardServer(shards, cut_once={"shard_00001.parquet"})
    try:
        proc = run_prepare(cache, "--num-shards", "2", AUTORESEARCH_DATA="climbmix", AUTORESEARCH_DATA_URL=server.url)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        log = list(server.requests)

        # the killed download resumed from its 1000 bytes
        assert [(r[1], r[2]) for r in log if r[0] == "shard_00000.parquet"] == [("bytes=1000-", 206)]
        # the cut transfer was retried from exactly where the connection closed
        cut = [r for r in log if r[0] == "shard_00001.parquet"]
        assert len(cut) == 2 and cut[0][1] is None and cut[0][2] == 200
        half = cut[0][3]
        assert 0 < half < len(shards["shard_00001.parquet"])
        assert cut[1][1] == f"bytes={half}-" and cut[1][2] == 206
        assert "retrying" in proc.stdout
        # every shard arrived whole, under its final name only
        for name, data in shards.items():
            assert (raw / name).read_bytes() == data
        assert not list(raw.glob("*.part")) and not list(cache.rglob("*.tmp"))

        prep = load_prepare(monkeypatch, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_DATA="climbmix")
        meta = json.loads((prep.data_dir() / "meta.json").read_text())
        assert meta["train"] == ["train_00000", "train_00001"] and meta["val"] == ["val_00000"]
        tok = prep.Tokenizer.load()
        (val_tokens, val_offsets), = prep._load_split("val")
        first_val_doc = pq.read_table(io.BytesIO(shards["shard_06542.parquet"])).column("text")[0].as_py()
        assert tok.decode(val_tokens[val_offsets[0] + 1:val_offsets[1]]) == first_val_doc  # pinned val shard
        assert meta["train_tokens"] == sum(len(t) for t, _ in prep._load_split("train"))

        # a second run finds everything in place: no request, no file touched
        before = snapshot(cache)
        again = run_prepare(cache, "--num-shards", "2", AUTORESEARCH_DATA="climbmix", AUTORESEARCH_DATA_URL=server.url)
        assert again.returncode == 0, again.stderr
        assert server.requests == log
        assert snapshot(cache) == before
    finally:
        server.close()


def test_download_starts_over_when_the_server_ignores_ranges(tmp_path, shards, monkeypatch):
    server = ShardServer(shards, ranges=False)
    try:
        prep = load_prepare(monkeypatch, AUTORESEARCH_CACHE=str(tmp_path), AUTORESEARCH_DATA="climbmix",
                            AUTORESEARCH_DATA_URL=server.url)
        dest = tmp_path / "shard_00001.parquet"
        dest.with_name(dest.name + ".part").write_bytes(b"garbage from an older, different file")
        prep.download(f"{server.url}/shard_00001.parquet", dest)
        assert dest.read_bytes() == shards["shard_00001.parquet"]
        assert server.requests[0][1] == "bytes=37-" and server.requests[0][2] == 200
        with pytest.raises(prep._DownloadFatal):  # a missing file is not retried
            prep.download(f"{server.url}/shard_09999.parquet", tmp_path / "shard_09999.parquet")
        assert [r[0] for r in server.requests].count("shard_09999.parquet") == 1
    finally:
        server.close()


# ---------------------------------------------------------------------------
# a user's own folder

def test_local_folder_of_txt_jsonl_parquet(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = random.Random(5)

    def para() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) + "."

    (folder / "a.txt").write_text("\n\n".join(para() for _ in range(300)))
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": para()}) + "\n" for _ in range(300)))
    last_docs = [para() for _ in range(200)]
    pq.write_table(pa.table({"text": last_docs}), folder / "c.parquet")
    cache = tmp_path / "cache"

    proc = run_prepare(cache, AUTORESEARCH_DATA=str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prep = load_prepare(monkeypatch, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_DATA=str(folder))
    meta = json.loads((prep.data_dir() / "meta.json").read_text())
    assert meta["train_tokens"] > 10 * meta["val_tokens"] > 0
    tok = prep.Tokenizer.load()
    (val_tokens, val_offsets), = prep._load_split("val")
    val_docs = [tok.decode(val_tokens[a + 1:b]) for a, b in zip(val_offsets, val_offsets[1:], strict=False)]
    assert val_docs == last_docs[-len(val_docs):]  # validation: the tail of the folder, in path order
    (train_tokens, _), = prep._load_split("train")
    assert last_docs[-1] not in tok.decode(train_tokens)

    before = snapshot(cache)
    assert run_prepare(cache, AUTORESEARCH_DATA=str(folder)).returncode == 0
    assert snapshot(cache) == before
    (folder / "d.txt").write_text("\n\n".join(para() for _ in range(50)))  # the folder changed: prepared again
    again = run_prepare(cache, AUTORESEARCH_DATA=str(folder))
    assert again.returncode == 0 and "preparing it again" in again.stdout
    assert json.loads((prep.data_dir() / "meta.json").read_text())["train_tokens"] > meta["train_tokens"]
