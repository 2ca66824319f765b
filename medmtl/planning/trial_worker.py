"""Runs one CPU trial (:meth:`medmtl.planning.trial.BundleTrial.measure`) in a fresh process.

Why a process of its own: its peak resident memory (``VmHWM``) is then the peak a training process
has (Python, PyTorch, MONAI, the network, the optimizer state and the step), with nothing left
over from earlier trials. Prints ``ready`` once imported, reads a JSON request on stdin (none: exits),
writes one JSON line on stdout.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys

import torch

from medmtl.engines.host_memory import tune_host_allocator
from medmtl.planning.trial import BundleTrial
from medmtl.planning.worker_pool import READY

__all__ = ["main"]


def main() -> int:
    print(READY, flush=True)  # imports done: the pool may time steps again (medmtl.planning.worker_pool)
    text = sys.stdin.read()
    if not text.strip():  # the plan needed no more trials
        return 0
    request = json.loads(text)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    device = torch.device("cpu")
    tune_host_allocator(device)  # as the bundles' training does
    trial = BundleTrial(request["bundle"], request["overrides"], device, sample_cases=request["sample_cases"])
    trial.in_process = True
    try:
        results = trial.measure(
            {}, request["batch_sizes"], request["memory_budget"], request["steps"], request.get("min_seconds")
        )
    finally:
        trial.close()
    answer = {"results": [dataclasses.asdict(r) for r in results], "preprocess_seconds": trial.preprocess_seconds}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    status = main()
    # The pool waits for this process to end, and CPython's exit would spend about two seconds collecting the
    # objects torch and MONAI made on import. Frozen, they are skipped; safe here: the answer is printed and
    # flushed, the trial's files are written and removed, and nothing else is open.
    gc.freeze()
    sys.exit(status)
