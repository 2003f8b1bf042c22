"""Every limit the server enforces, one value each.

The engine's checks enforce these whatever the caller; the MCP tool schemas are built from the
same constants (`Field(le=...)`), so a client sees the limit the engine applies. Change a value
here and both move together; `tests/snapshots/` shows the schema change.
"""

from __future__ import annotations

# -- launches ------------------------------------------------------------------------------------
MAX_DESCRIPTION = 200          # characters of an experiment's one-line description
MAX_REPLICATES = 16            # seeds of one launch
MAX_WAVE_EXPERIMENTS = 128     # (cells + control) x replicates
MAX_PROMOTE = 8                # experiments promoted in one call
MAX_QUEUED = 1000              # live (queued + running) experiments: a sanity bound
USER_PRIORITY = (-100, 100)    # the priority range a caller may ask for
PROMOTION_PRIORITY = 1000      # promotions run before any user-launched work
DEFAULT_SEED = 42
MAX_SEED = 2**31 - 1
#: the first replicate's seed: the others count up from it and stay <= MAX_SEED
MAX_FIRST_SEED = MAX_SEED - MAX_REPLICATES
MAX_SOURCE_PATH = 200          # characters of a `source` path in the workspace
MAX_REASON = 300               # characters of a one-line hypothesis (launch) or reason (keep/discard)

# -- train.py variants (rewritten through the AST) -----------------------------------------------
MAX_OVERRIDES = 32             # constants per experiment; a wave cell has at most MAX_AXES anyway
MAX_VALUE_REPR = 1000          # characters of one written literal
MAX_VALUE_DEPTH = 4            # nesting of lists/dicts inside a value
MAX_VALUE_ITEMS = 64           # items of one list/dict value (tool schema)
MAX_AXES = 4                   # axes of a factorial wave
MAX_LEVELS = 8                 # levels per axis
MAX_DESCRIBE_VALUE = 40        # characters per value in a generated label

# -- the workspace (git) ---------------------------------------------------------------------------
MAX_SOURCE_BYTES = 1_000_000   # a train.py (or other source) the server snapshots or rewrites
MAX_MESSAGE_CHARS = 10_000     # a commit message

# -- calls -----------------------------------------------------------------------------------------
MAX_IDS = 1000                 # experiment ids in one engine call
MAX_WAIT_IDS = 256             # experiment ids one wait / cancel names
MAX_WAIT_S = 3600.0            # one wait call, as a caller may ask for
#: the server-wide cap on one wait call (`serve --max-wait-s`): under the ~60 s after which most
#: MCP clients give up on a request that sends no progress (docs in ../shared/docs/clients.md)
DEFAULT_MAX_WAIT_S = 50.0
HEARTBEAT_S = 10.0             # a blocking wait reports progress at least this often
MAX_LOG_LIMIT = 200_000        # characters of log one engine call returns
MAX_LIST_LIMIT = 500           # experiments one engine list call returns
MAX_LIST_OFFSET = 10**7
MAX_PROVISION = 64             # clusters / slots brought up in one call
MAX_TEARDOWN_NAMES = 128       # clusters named in one teardown

# -- what one tool result carries (context size for the model) -------------------------------------
#: the most characters one tool result's text may have, whatever the ledger's or the fleet's size
#: (lists are cut with a count of what was left out and the call that pages on; tests/test_result_size.py)
MAX_RESULT_CHARS = 12_000
#: what the long list of one result (rows, a log page) may take of it: the rest is its other fields
RESULT_LIST_CHARS = 9_000
TOOL_PAGE_MAX = 50             # experiments per fetch_results page
TOOL_LEADERBOARD_ROWS = 25     # leaderboard rows per GPU type
TOOL_LOG_PAGE_MAX = 8_000      # characters of log per get_experiment call
TOOL_LISTED = 64               # experiments listed in a launch / cancel result
TOOL_WAIT_ROWS = 30            # finished experiments (with verdicts) listed in a wait result
TOOL_PLOT_PAGE = 500
TOOL_ROW_IDS = 3               # experiment ids shown per leaderboard row
TOOL_WAVE_CELLS = 8            # cells per GPU type in an analyze_wave result (the decisive and best first)

# -- analysis --------------------------------------------------------------------------------------
MAX_LEADERBOARD_ROWS = 1000
MAX_IDS_PER_ROW = 20
#: keys of a run's summary beyond the known Metrics fields kept per run (a task's own metric,
#: karpathy's extra summary lines), and the longest key / string value kept
MAX_EXTRA_METRICS = 32
MAX_EXTRA_CHARS = 64
MAX_DIGEST_CHARS = 10_000      # the session digest (~2,500 tokens), whatever the ledger's size
