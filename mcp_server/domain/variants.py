"""Variants of train.py: rewrite its module-level constants through the AST, never by text search.

A *constant* is an UPPER_CASE name bound exactly once in the module's scope, by a top-level
statement `NAME = value` or `NAME: T = value`, where value is a Python literal
(`ast.literal_eval`) or plain arithmetic on number literals such as `2**19` (karpathy's
train.py writes `TOTAL_BATCH_SIZE = 2**19`).

Names bound more than once at module level (reassigned, `+=`, bound in an if/for/with/import,
declared `global` and assigned in a function, or sharing a value as in `A = B = 1`) are NOT
overridable: rewriting one binding would leave the others in force, and rewriting all of them
could change the program's logic. `apply_overrides` rejects them and says why.

Values arrive from JSON (int, float, str, bool, None, lists and dicts of those; tuples are
accepted too). They are written as `repr(value)`, so a string is always a string literal: code
inside it is never executed. Only the value's own source text is replaced (located with
lineno/col_offset/end_lineno/end_col_offset), so comments and formatting elsewhere stay intact.

(Over 400 lines on purpose: the scan that decides what is overridable, the checks on values and
the rewrite must agree exactly, so they live together; factorial designs are the short rest.)
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.limits import (
    MAX_AXES,
    MAX_DESCRIBE_VALUE,
    MAX_LEVELS,
    MAX_OVERRIDES,
    MAX_SOURCE_BYTES,
    MAX_VALUE_DEPTH,
    MAX_VALUE_REPR,
)

CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

_LEAF_TYPES = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class _Binding:
    """One overridable constant: its value and where the value's source text sits."""

    name: str
    value: Any
    line: int
    start: int  # character offsets of the value expression in the source
    end: int


# ------------------------------------------------------------------------------------------
# scanning


def _line_starts(source: str) -> list[int]:
    """Character offset of the start of each line, split the way Python's tokenizer does
    (only \\n, \\r\\n and \\r end a line; str.splitlines also splits on \\x0c and others)."""
    starts = [0]
    for m in re.finditer(r"\r\n|\r|\n", source):
        starts.append(m.end())
    return starts


def _char_offset(source: str, starts: list[int], lineno: int, col_utf8: int) -> int:
    """AST columns are UTF-8 byte offsets; convert to a character offset into `source`."""
    line_start = starts[lineno - 1]
    line_end = starts[lineno] if lineno < len(starts) else len(source)
    prefix = source[line_start:line_end].encode("utf-8")[:col_utf8]
    return line_start + len(prefix.decode("utf-8"))


_BIN_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class _NotConstant(Exception):
    pass


def _eval_number_expr(node: ast.expr) -> int | float:
    """Evaluate arithmetic on number literals (e.g. 2**19, 3e-4 * 2) without executing code.
    Anything else (names, calls, attributes) is not a constant."""
    if isinstance(node, ast.Constant) and (type(node.value) is int or type(node.value) is float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval_number_expr(node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _eval_number_expr(node.left), _eval_number_expr(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 128 or abs(left) > 2**64):
            raise _NotConstant  # keep evaluation cheap: no 10**10**10
        try:
            result = _BIN_OPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            raise _NotConstant from None
        if type(result) not in (int, float) or (isinstance(result, int) and result.bit_length() > 256):
            raise _NotConstant
        return result
    raise _NotConstant


def _constant_value(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return _eval_number_expr(node)
    except (_NotConstant, RecursionError):
        raise _NotConstant from None


def _module_scope_bindings(tree: ast.Module) -> dict[str, list[int]]:
    """Every line where a name is bound in the module's scope (not in function/class scopes,
    except through `global`)."""
    bound: dict[str, list[int]] = {}

    def add(name: str, line: int) -> None:
        bound.setdefault(name, []).append(line)

    def visit(node: ast.AST, in_module_scope: bool, globals_here: frozenset[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if in_module_scope:
                add(node.name, node.lineno)
            for d in getattr(node, "decorator_list", []):
                visit(d, in_module_scope, globals_here)
            declared = frozenset(
                n for stmt in ast.walk(node) if isinstance(stmt, ast.Global) for n in stmt.names
            )
            for body_stmt in node.body:
                visit(body_stmt, False, declared)
            return
        if isinstance(node, ast.Lambda):
            return  # own scope, cannot bind module names (walrus is illegal there)
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if in_module_scope or node.id in globals_here:
                add(node.id, node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                if in_module_scope or name in globals_here:
                    add(name, node.lineno)
        elif (isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name
              and (in_module_scope or node.name in globals_here)):
            add(node.name, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, in_module_scope, globals_here)

    for stmt in tree.body:
        visit(stmt, True, frozenset())
    return bound


def _parse(source: Any) -> ast.Module:
    if not isinstance(source, str):
        raise InvalidInput(f"train.py source must be text (str), got {type(source).__name__}.")
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise InvalidInput(f"train.py is larger than {MAX_SOURCE_BYTES} bytes; keep the training script under 1 MB.")
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise InvalidInput(
            f"train.py does not parse (line {e.lineno}: {e.msg}); fix the syntax error before launching variants."
        ) from None
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"train.py cannot be parsed ({e}); fix it before launching variants.") from None


def _scan(source: str) -> tuple[dict[str, _Binding], dict[str, str]]:
    """(overridable constants, {UPPER_CASE name: why it is not overridable})."""
    tree = _parse(source)
    starts = _line_starts(source)
    bindings = _module_scope_bindings(tree)
    constants: dict[str, _Binding] = {}
    excluded: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None and stmt.simple:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name) and CONSTANT_NAME.fullmatch(t.id)]
        if not names:
            continue
        if len(targets) > 1:
            for n in names:
                excluded[n] = f"it shares one value with other names in a chained assignment (line {stmt.lineno})"
            continue
        name = names[0]
        lines = bindings.get(name, [])
        if len(lines) > 1:
            excluded[name] = (
                f"it is bound {len(lines)} times at module level (lines {', '.join(map(str, sorted(set(lines))))}); "
                "rewriting one binding would be ambiguous"
            )
            continue
        try:
            val = _constant_value(value)
        except _NotConstant:
            excluded[name] = f"its value on line {stmt.lineno} is an expression, not a literal"
            continue
        # ast.parse sets end positions on every expression node (only hand-built nodes lack them)
        assert value.end_lineno is not None and value.end_col_offset is not None
        start = _char_offset(source, starts, value.lineno, value.col_offset)
        end = _char_offset(source, starts, value.end_lineno, value.end_col_offset)
        constants[name] = _Binding(name, val, stmt.lineno, start, end)
    # Names bound more than once never reach `constants` (the check above), but a name bound
    # only by other statements (e.g. `for LR in ...`) is simply not a constant.
    return constants, excluded


def list_constants(source: str) -> dict[str, Any]:
    """Module-level UPPER_CASE constants of train.py with their current values, in source order."""
    constants, _ = _scan(source)
    return {name: b.value for name, b in constants.items()}


# ------------------------------------------------------------------------------------------
# values


def _strict_equal(a: Any, b: Any) -> bool:
    """Equality that also compares types (1 == 1.0 == True in Python, but not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    return a == b


def _check_value(name: str, value: Any, depth: int = 0) -> None:
    """Only JSON-like Python literals: anything else could not be written back as a literal."""
    if depth > MAX_VALUE_DEPTH:
        raise InvalidInput(f"{name}: value nests deeper than {MAX_VALUE_DEPTH} levels; use a flatter literal.")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(
                f"{name}: {value!r} is not a finite number (it has no Python literal); use a finite float."
            )
        return
    if isinstance(value, int):  # bool included
        if value.bit_length() > 3000:
            raise InvalidInput(f"{name}: integer is far too large; "
                               f"the written value is limited to {MAX_VALUE_REPR} characters.")
        return
    if isinstance(value, str):
        if len(value) > MAX_VALUE_REPR:
            raise InvalidInput(
                f"{name}: string of {len(value)} characters is too long (limit {MAX_VALUE_REPR}); "
                "put long content in a file in the workspace and launch it with source=<file>."
            )
        return
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(name, item, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, _LEAF_TYPES):
                raise InvalidInput(f"{name}: dict keys must be str, int, float, bool or None, got {type(k).__name__}.")
            _check_value(name, k, depth + 1)
            _check_value(name, v, depth + 1)
        return
    raise InvalidInput(
        f"{name}: {type(value).__name__} is not a literal value. Valid values: int, float, str, bool, "
        "null/None, and lists or dicts of those (as in JSON)."
    )


def _type_label(v: Any) -> str:
    return "None" if v is None else type(v).__name__


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _coerce(name: str, current: Any, value: Any) -> Any:
    """Decide whether `value` may replace `current`, and the exact value to write.

    Rules: bool stays bool; int and float may replace each other (an integral float such as
    4.0 written into an int constant becomes 4, because range(4.0) would crash); str stays str;
    list/tuple replace each other and keep the constant's kind (JSON has no tuples); dict stays
    dict; a constant that is None may take any value; None may only replace None."""
    cur, new = type(current), type(value)
    if current is None:
        return value
    if cur is bool or new is bool:
        if cur is bool and new is bool:
            return value
    elif cur in (int, float) and new in (int, float):
        if cur is int and new is float and value.is_integer():
            return int(value)
        return value
    elif cur in (list, tuple) and new in (list, tuple):
        return cur(value)
    elif cur is new:
        return value
    raise InvalidInput(
        f"{name} is {_a(_type_label(current))} (currently {_short_repr(current)}); {_a(_type_label(value))} "
        f"({_short_repr(value)}) cannot replace it. Give {_a(_allowed_for(current))} value."
    )


def _allowed_for(current: Any) -> str:
    if isinstance(current, bool):
        return "bool (true/false)"
    if isinstance(current, (int, float)):
        return "number (int or float)"
    if isinstance(current, (list, tuple)):
        return "list"
    return _type_label(current)


def _short_repr(value: Any, limit: int = MAX_DESCRIBE_VALUE) -> str:
    try:
        text = repr(value)
    except ValueError:  # int too large to print
        return "<huge int>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _literal(name: str, value: Any) -> str:
    text = repr(value)
    if len(text) > MAX_VALUE_REPR:
        raise InvalidInput(
            f"{name}: the value's literal is {len(text)} characters (limit {MAX_VALUE_REPR}); use a smaller value."
        )
    return text


# ------------------------------------------------------------------------------------------
# rewriting


def _unknown_name_error(name: Any, constants: dict[str, _Binding], excluded: dict[str, str]) -> InvalidInput:
    valid = ", ".join(constants) or "(none)"
    if not isinstance(name, str):
        return InvalidInput(f"Override names must be strings, got {type(name).__name__}. Valid names: {valid}.")
    if name in excluded:
        return InvalidInput(
            f"{name} cannot be overridden: {excluded[name]}. Edit train.py by hand and launch it, "
            f"or override one of: {valid}."
        )
    close = difflib.get_close_matches(name.upper(), list(constants), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    if not CONSTANT_NAME.fullmatch(name):
        why = "constants are module-level UPPER_CASE names (e.g. DEPTH)"
    else:
        why = "train.py has no module-level literal constant with that name"
    return InvalidInput(f"Unknown constant {_short_repr(name)}: {why}.{hint} Valid names: {valid}.")


def apply_overrides(source: str, overrides: dict[str, Any]) -> str:
    """Return `source` with each constant in `overrides` set to the given value.

    All-or-nothing: any bad name or value raises InvalidInput and nothing is returned. A value
    strictly equal to the current one leaves that constant's text untouched, so an override that
    changes nothing yields byte-identical code (and the same code_hash as the control)."""
    if not isinstance(overrides, dict):
        raise InvalidInput(
            f"overrides must be an object mapping constant names to values, e.g. {{\"DEPTH\": 4}}; "
            f"got {type(overrides).__name__}."
        )
    constants, excluded = _scan(source)
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidInput(
            f"{len(overrides)} overrides given; at most {MAX_OVERRIDES} per experiment. "
            "Split the change, or edit train.py directly."
        )
    edits: list[tuple[_Binding, Any, str]] = []
    for name, value in overrides.items():
        if not isinstance(name, str) or name not in constants:
            raise _unknown_name_error(name, constants, excluded)
        _check_value(name, value)
        binding = constants[name]
        new_value = _coerce(name, binding.value, value)
        if _strict_equal(new_value, binding.value):
            continue
        edits.append((binding, new_value, _literal(name, new_value)))

    result = source
    for binding, _, text in sorted(edits, key=lambda e: e[0].start, reverse=True):
        result = result[: binding.start] + text + result[binding.end :]

    # Verify: the rewritten module parses and each constant now holds exactly the requested value.
    try:
        check, _ = _scan(result)
    except InvalidInput as e:  # pragma: no cover - repr() of a checked value is always a literal
        raise InvalidInput(
            f"Internal error: the rewritten train.py does not parse ({e}); nothing was changed.") from None
    for binding, new_value, _ in edits:
        got = check.get(binding.name)
        if got is None or not _strict_equal(got.value, new_value):  # pragma: no cover - defensive
            raise InvalidInput(
                f"Internal error: {binding.name} could not be rewritten to {_short_repr(new_value)}; "
                "nothing was changed."
            )
    return result


# ------------------------------------------------------------------------------------------
# factorial designs


def _level_key(value: Any) -> str:
    """A hashable identity for a level that distinguishes 1, 1.0 and True."""
    def tag(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return ["seq", [tag(x) for x in v]]
        if isinstance(v, dict):
            return ["map", sorted((repr(k), tag(x)) for k, x in v.items())]
        return [type(v).__name__, repr(v)]
    return json.dumps(tag(value))


def factorial(axes: dict[str, list[Any]], max_cells: int = 64) -> list[dict[str, Any]]:
    """Every combination of the axes' levels (full factorial), in a stable order: the first axis
    varies slowest, levels in the order given. Names are checked for form here; whether they
    exist in train.py is checked by apply_overrides on each cell."""
    if isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 1:
        raise InvalidInput(f"max_cells must be a positive integer, got {max_cells!r}.")
    if not isinstance(axes, dict) or not axes:
        raise InvalidInput(
            f"axes must be a non-empty object of constant name -> list of levels, e.g. "
            f"{{\"DEPTH\": [6, 8], \"MATRIX_LR\": [0.02, 0.04]}}; 1 to {MAX_AXES} axes."
        )
    if len(axes) > MAX_AXES:
        raise InvalidInput(
            f"{len(axes)} axes given; a wave has 1 to {MAX_AXES}. Keep the {MAX_AXES} most promising factors, "
            "fix the others in train.py, and run another wave for the rest."
        )
    total = 1
    for name, levels in axes.items():
        if not isinstance(name, str) or not CONSTANT_NAME.fullmatch(name):
            raise InvalidInput(
                f"Axis name {_short_repr(name)} is not a constant name: "
                "axes are module-level UPPER_CASE constants of train.py (e.g. DEPTH)."
            )
        if not isinstance(levels, (list, tuple)) or not (1 <= len(levels) <= MAX_LEVELS):
            n = len(levels) if isinstance(levels, (list, tuple)) else type(levels).__name__
            raise InvalidInput(f"Axis {name}: give a list of 1 to {MAX_LEVELS} levels (got {n}).")
        seen: set[str] = set()
        for level in levels:
            _check_value(name, level)
            key = _level_key(level)
            if key in seen:
                raise InvalidInput(f"Axis {name}: level {_short_repr(level)} is listed twice; "
                                   "each level once (use replicates for repeats).")
            seen.add(key)
        total *= len(levels)
    if total > max_cells:
        sizes = " x ".join(str(len(v)) for v in axes.values())
        raise InvalidInput(
            f"The design has {sizes} = {total} cells; at most {max_cells} per wave. "
            "Drop levels or axes (screen the most promising ones first), or split it into several waves."
        )
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def describe(overrides: dict[str, Any]) -> str:
    """A short label such as 'DEPTH=4 MATRIX_LR=0.02' (empty string for no overrides)."""
    return " ".join(f"{name}={_short_repr(value)}" for name, value in overrides.items())
