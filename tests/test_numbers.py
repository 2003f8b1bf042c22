"""domain/numbers: how numbers are written for a person or a model (pure)."""

from __future__ import annotations

import math

from mcp_server.domain import numbers


def test_text_forms_say_n_a_for_no_value():
    assert numbers.fixed(None) == "n/a" and numbers.general(None, 2) == "n/a"
    assert numbers.fixed(0.98765432) == "0.987654" and numbers.fixed(1.5, 2) == "1.50"
    assert numbers.general(0.0012345, 2) == "0.0012" and numbers.general(12345.0, 2) == "1.2e+04"


def test_rounding_keeps_the_digits_a_reader_needs():
    assert numbers.significant(1.23456789, 7) == 1.234568
    assert numbers.lean(0.987654321) == 0.987654          # a val_bpb: 6 significant digits
    assert numbers.lean(-0.00123456) == -0.001235         # a delta: 4
    assert numbers.lean(1733000000.123456) == 1733000000.123   # a timestamp: 3 decimals
    assert numbers.lean(0.0) == 0.0 and math.isnan(numbers.lean(float("nan"))) and numbers.lean(math.inf) == math.inf
