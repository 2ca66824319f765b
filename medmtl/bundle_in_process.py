"""``python -m monai.bundle run ...`` in this process, as its own process would run it.

Why: ``medmtl predict`` ran the bundle's inference in a new process, which started Python and imported
torch, MONAI, ignite and MLflow a second time: on one 2D image that was most of the wall time, the
engine run itself a fraction of a second. A caller whose process ends with the run (the ``medmtl
predict`` command) runs it here instead. The run keeps the command line MONAI's process would see
(``sys.argv``, read by :func:`medmtl.engines.start_checks.cli_overrides`) and gives the same exit
status; it leaves what a workflow sets for the whole process (logging configuration, torch and MONAI
settings), which is why library callers keep the subprocess (:func:`medmtl.experiments.commands.run_medmtl`).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

__all__ = ["exit_status", "run_bundle_in_process"]


def exit_status(code: object) -> int:
    """The exit status of a process ending with ``SystemExit(code)``: Python's rules (a message is status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as the interpreter prints it before exiting
    return 1


def run_bundle_in_process(args: Sequence[str]) -> int:
    """Run ``python -m monai.bundle ARGS`` here; its exit status.

    ``monai/bundle/__main__.py`` hands its names to ``fire.Fire()``; the same names go to fire here, as
    a mapping: fire then does not read the caller's frames (``inspect.stack()``, about 1 s with the
    thousands of modules MONAI loads). ``sys.argv`` is that process's command line while the bundle runs.

    Args:
        args: what follows ``python -m monai.bundle`` (``run --config_file ... --key value``), e.g.
            ``medmtl.bundle_layers.bundle_command(...)[3:]``.

    Returns:
        0 on success; a ``SystemExit``'s status (a guard's or a start check's one-line stop is 1,
        printed); 1 with the traceback printed for any other error, as the interpreter does.
    """
    from monai.bundle import __main__ as entry  # its names only: the fire call is under __name__ == "__main__"
    from monai.utils import optional_import

    fire, _ = optional_import("fire")
    saved = sys.argv
    sys.argv = [entry.__file__, *args]
    try:
        fire.Fire(dict(vars(entry)), command=list(args))
    except SystemExit as stop:
        return exit_status(stop.code)
    except Exception:  # noqa: BLE001 - what the bundle's own process prints before exiting with 1
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved
        sys.stdout.flush()
    return 0
