"""The benchmarks' verdicts: per-round ratio spread and "met only when the whole IQR clears the goal".

``benchmarks/_bench.py`` is not part of the package (the scripts import it from their own folder), so it
is loaded from its file, as the data tests load their fixture writers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("medmtl_benchmarks_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_spread_pairs_rounds_and_gives_median_and_quartiles(bench) -> None:
    # round i: numerator i * 10, denominator 10 (ratio i), given out of order
    numerator, denominator = [30.0, 10.0, 50.0, 20.0, 40.0], [10.0] * 5
    spread = bench.ratio_spread(numerator, denominator)
    assert spread["ratios"] == [3.0, 1.0, 5.0, 2.0, 4.0]  # per round, in round order
    assert (spread["median"], spread["q1"], spread["q3"], spread["rounds"]) == (3.0, 2.0, 4.0, 5)
    # a slow round of both candidates (machine load) leaves its ratio unchanged
    assert bench.ratio_spread([2.0, 20.0], [1.0, 10.0])["ratios"] == [2.0, 2.0]
    one = bench.ratio_spread([3.0], [2.0])
    assert (one["median"], one["q1"], one["q3"], one["rounds"]) == (1.5, 1.5, 1.5, 1)
    with pytest.raises(ValueError):  # the rounds must pair up
        bench.ratio_spread([1.0, 2.0], [1.0])
    assert bench.spread_text(spread) == "3.000 (IQR 2.000-4.000, 5 rounds)"


@pytest.mark.parametrize(
    ("q1", "q3", "goal", "at_most", "expected"),
    [
        (0.98, 1.01, 1.02, True, "met"),  # the whole IQR at or below an upper limit
        (0.98, 1.02, 1.02, True, "met"),
        (1.00, 1.05, 1.02, True, "unclear"),  # straddles it: the median alone would say "met"
        (1.03, 1.10, 1.02, True, "missed"),
        (3.10, 4.00, 3.0, False, "met"),  # a speed-up: the whole IQR at or above a lower limit
        (2.40, 3.20, 3.0, False, "unclear"),
        (2.35, 2.42, 3.0, False, "missed"),
    ],
)
def test_verdict_needs_the_whole_interquartile_range(bench, q1, q3, goal, at_most, expected) -> None:
    spread = {"median": (q1 + q3) / 2, "q1": q1, "q3": q3, "rounds": 7}
    assert bench.verdict(spread, goal, at_most=at_most) == expected
