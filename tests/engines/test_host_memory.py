"""tune_host_allocator: freed large CPU tensors are reused instead of page-faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medmtl.engines import host_memory, tune_host_allocator

# a 64 MiB tensor (above glibc's largest mmap threshold) allocated and freed repeatedly; prints the
# minor page faults of each allocation (ru_minflt counts pages touched for the first time)
ALLOCATE_AND_FREE = """
import resource, sys, torch
from medmtl.engines import tune_host_allocator
if sys.argv[1] == "tuned":
    assert tune_host_allocator("cpu")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(12):
    before = faults()
    x = torch.ones(64 * 2**20 // 4)
    del x
    counts.append(faults() - before)
print(" ".join(map(str, counts)))
"""
# fewest faults that can map 64 MiB fresh: one per 2 MiB page where transparent huge pages are always on
MIN_FRESH_FAULTS = 64 // 2

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt tuning is glibc-only (Linux)")


def _faults_per_allocation(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATE_AND_FREE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return [int(v) for v in out.stdout.split()]


@glibc_only
def test_tuned_allocator_reuses_freed_pages():
    default, tuned = _faults_per_allocation("default"), _faults_per_allocation("tuned")
    # glibc's default: every allocation gets fresh pages (mmap) and faults them in again
    # (16384 4 KiB pages here; 32 where transparent huge pages are always on)
    assert min(default[-4:]) >= MIN_FRESH_FAULTS, default
    # tuned: once the heap holds the block, the same allocation touches (almost) no new page
    assert max(tuned[-4:]) < min(default[-4:]) / 10, (default, tuned)


def test_only_cpu_runs_are_tuned_and_the_setting_can_turn_it_off(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "_glibc", lambda: calls.append("libc"))
    assert tune_host_allocator("cuda") is False
    assert tune_host_allocator("cpu", enabled=False) is False
    assert calls == []  # the C library is not even looked up


def test_without_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(host_memory, "_tuned", False)
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert tune_host_allocator("cpu") is False
