"""Helpers shared by the benchmark scripts: machine description, interleaved timing, table, JSON.

Every script measures the things it compares side by side in one process: a warm-up call of each,
then ``repeats`` rounds in which each candidate runs once (the order alternates between rounds),
so load from other processes hits all candidates alike; it reports medians and keeps every raw
time in its JSON. Not a module of the package: the scripts import it from their own folder.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import monai
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(os.environ.get("MEDMTL_DATA_DIR", REPO.parent / "shared" / "data"))
"""The real images (``../shared/data``; ``MEDMTL_DATA_DIR`` overrides it, as in the data specs)."""


def machine(**extra: Any) -> dict[str, Any]:
    """Where and with what the figures were measured (goes into every JSON's ``meta``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cores": cores,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda": torch.cuda.is_available(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **extra,
    }


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    warmups: Sequence[Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times, one call of each per round (order alternating).

    Args:
        candidates: name -> a function doing one unit of work (an epoch, an inference pass...).
        repeats: rounds (the medians need >= 5 for the reported figures; ``--quick`` uses fewer).
        warmup: untimed calls of each candidate first (allocator, lazy init, file cache).
        warmups: untimed calls to make instead, where a full call of every candidate would
            only cost time (candidates sharing a network and shapes warm each other up).

    Returns:
        name -> the raw times in seconds, in round order.
    """
    if warmups is not None:
        for fn in warmups:
            fn()
    else:
        for _ in range(warmup):
            for fn in candidates.values():
                fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(candidates[name]))
    return times


def summary(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw times (seconds)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": list(times),
    }


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios ``numerator[i] / denominator[i]``: median, interquartile range and round count.

    Why per round: candidates timed in the same round share that round's load from other processes,
    so the ratio of each round is steadier than the ratio of two medians; the spread says how far a
    verdict can be trusted on this machine.
    """
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3, "rounds": len(ratios), "ratios": ratios}


def verdict(spread: Mapping[str, Any], goal: float, at_most: bool = True) -> str:
    """``met`` only when the whole interquartile range clears ``goal``; ``missed`` when it lies wholly past it.

    ``at_most``: the goal is an upper limit (a time ratio <= goal); else a lower limit (a speed-up >= goal).
    An interval that straddles the goal is ``unclear``: more rounds or a quieter machine are needed.
    """
    low, high = spread["q1"], spread["q3"]
    if (high <= goal) if at_most else (low >= goal):
        return "met"
    if (low > goal) if at_most else (high < goal):
        return "missed"
    return "unclear"


def spread_text(spread: Mapping[str, Any]) -> str:
    """``1.02 (IQR 0.98-1.05, 7 rounds)``: how the reports print a per-round ratio."""
    return f"{spread['median']:.3f} (IQR {spread['q1']:.3f}-{spread['q3']:.3f}, {spread['rounds']} rounds)"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A plain text table; floats are printed with 4 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for row in text:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))))


def write_results(name: str, meta: Mapping[str, Any], results: Mapping[str, Any], quick: bool = False) -> Path:
    """``benchmarks/results/<name>.json`` with ``meta`` and ``results``.

    A ``--quick`` smoke run writes ``<name>.quick.json`` (git-ignored) instead, so it never replaces
    the figures of a full run.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / (f"{name}.quick.json" if quick else f"{name}.json")
    out.write_text(json.dumps({"meta": dict(meta), "results": dict(results)}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out


def missing_data(*paths: Path) -> bool:
    """True (after saying why) when one of the real-data ``paths`` is absent: the caller exits 0."""
    absent = [str(p) for p in paths if not p.exists()]
    if absent:
        print(
            f"skipped: real data not found ({', '.join(absent)}); set MEDMTL_DATA_DIR to the shared "
            "data folder to run this benchmark. No results written."
        )
    return bool(absent)
