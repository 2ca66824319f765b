"""CPU trial workers started before they are needed, so their imports overlap the plan's data reading.

Why: each CPU trial runs in a fresh process (:mod:`medmtl.planning.trial_worker`, for a clean peak
memory), and a fresh process spends seconds importing PyTorch, MONAI and medmtl before its first
step. ``medmtl plan`` starts the workers its usual search needs while it validates and fingerprints
the data (no timing runs then) and waits until every started worker has finished importing before
it times anything, so an importing worker never takes CPU from a timed step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["READY", "TrialWorkerPool"]

READY = "ready"
"""What a worker prints on its own line once its imports are done (then it reads its request)."""


class _Worker:
    """One worker process: its stderr goes to a file (read back only when it fails)."""

    def __init__(self) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - open while the process lives; close() closes it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medmtl.planning.trial_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != READY:
            self.process.wait()
            raise RuntimeError(f"a trial worker failed to start:\n{self.stderr_tail()}")
        self.ready = True

    def stderr_tail(self, lines: int = 5) -> str:
        self.stderr.seek(0)
        return "\n".join(self.stderr.read().decode(errors="replace").strip().splitlines()[-lines:])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.stderr.close()


class TrialWorkerPool:
    """Worker processes for CPU trials: started ahead (:meth:`start`), or when a request finds none idle.

    Example::

        with TrialWorkerPool() as pool:  # idle workers are stopped on the way out
            pool.start(2)  # importing in the background
            ...  # read the data
            pool.wait_ready()  # before anything is timed
            answer = pool.run({"bundle": "ultrasound_mtl", ...})
    """

    def __init__(self) -> None:
        self._idle: list[_Worker] = []

    def start(self, count: int) -> None:
        """Start ``count`` more workers; they import, print :data:`READY` and wait for a request."""
        self._idle.extend(_Worker() for _ in range(count))

    def wait_ready(self) -> None:
        """Block until every idle worker has finished its imports (call before timing anything)."""
        for worker in self._idle:
            worker.wait_ready()

    def run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One trial request in an idle worker (a new one when none is idle); the worker's JSON answer.

        Every idle worker has finished importing before the request is sent: the trial times its steps,
        and a worker still importing beside it would take CPU from them.

        Raises:
            RuntimeError: the worker failed; the message ends with its last lines of stderr.
        """
        self.wait_ready()
        worker = self._idle.pop(0) if self._idle else _Worker()
        try:
            worker.wait_ready()
            stdout, _ = worker.process.communicate(json.dumps(request))
            if worker.process.returncode != 0:
                raise RuntimeError(f"trial steps of bundle {request.get('bundle')} failed:\n{worker.stderr_tail()}")
            return json.loads(stdout.strip().splitlines()[-1])
        finally:
            worker.close()

    def close(self) -> None:
        """Stop the workers no request took (again: nothing to do)."""
        while self._idle:
            self._idle.pop().close()

    def __enter__(self) -> TrialWorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
