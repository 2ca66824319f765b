"""Runs one CPU trial (:meth:`medmtl.planning.trial.BundleTrial.measure`) in a fresh process.

Why a process of its own: its peak resident memory (``VmHWM``) is then the peak a training process
has (Python, PyTorch, MONAI, the network, the optimizer state and the step), with nothing left
over from earlier trials. Reads a JSON request on stdin, writes one JSON line on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

import torch

from medmtl.engines.host_memory import tune_host_allocator
from medmtl.planning.trial import BundleTrial

__all__ = ["main"]


def main() -> int:
    request = json.loads(sys.stdin.read())
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
    sys.exit(main())
