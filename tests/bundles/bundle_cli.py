"""Bundle commands for the tests: the layered ``python -m monai.bundle run`` argv, plus test-only configs.

Why: several tests merge a test-only config (a kill hook, a NaN injector, a tracking guard) after a
bundle's layers; :func:`medmtl.bundle_layers.bundle_command` takes only the bundle's own layers.
:func:`run_together` runs independent bundle commands at the same time: each process spends
seconds importing MONAI on one core, so two of them overlap on the two cores of the CI machine.
:func:`run_in_process` runs commands that must follow one another (``medmtl experts``' trainings)
in the test process, which has imported MONAI once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import monai.bundle

from medmtl.bundle_layers import bundle_command, config_layers
from medmtl.cli import main
from medmtl.engines.start_checks import cli_overrides

__all__ = ["as_overrides", "bundle_argv", "run_in_process", "run_together"]


def as_overrides(overrides: Mapping[str, object]) -> list[str]:
    """``--key value`` pairs as MONAI reads them: lists as JSON, everything else as ``str``."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list | tuple) else str(value)]
    return args


def bundle_argv(
    bundle: str | os.PathLike,
    workflows: Sequence[str] = ("train",),
    overrides: Mapping[str, object] | Sequence[str] = (),
    extra_configs: Sequence[str | os.PathLike] = (),
) -> list[str]:
    """``bundle_command`` for ``workflows`` of ``bundle``, with ``extra_configs`` merged after its layers."""
    args = as_overrides(overrides) if isinstance(overrides, Mapping) else list(overrides)
    cmd = bundle_command(bundle, workflows, args)
    if extra_configs:
        files = [*config_layers(bundle, *workflows), *extra_configs]
        cmd[cmd.index("--config_file") + 1] = "[" + ",".join(repr(os.fspath(f)) for f in files) + "]"
    return cmd


def run_together(
    runs: Sequence[tuple[Sequence[str], str | os.PathLike]],
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> list[subprocess.CompletedProcess]:
    """Start every ``(command, cwd)`` at once, wait for all; results in order, as ``subprocess.run`` with
    ``capture_output=True, text=True`` gives them (output in files, so no pipe fills up while waiting)."""
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        started = []
        try:
            for cmd, cwd in runs:
                out, err = (stack.enter_context(tempfile.TemporaryFile()) for _ in range(2))
                started.append((cmd, subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err), out, err))
            for _, proc, _, _ in started:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        finally:
            for _, proc, _, _ in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        results = []
        for cmd, proc, out, err in started:
            text = []
            for handle in (out, err):
                handle.seek(0)
                text.append(handle.read().decode(errors="replace"))
            results.append(subprocess.CompletedProcess(list(cmd), proc.returncode, *text))
        return results


class _Finished(BaseException):
    """Ends ``medmtl run`` where it would exec MONAI (``medmtl.cli.main`` catches every ``Exception``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _monai_here(path: str, cmd: Sequence[str]) -> None:
    """In place of ``os.execv``: the ``python -m monai.bundle run ...`` command ``cmd``, run in this process.

    ``sys.argv`` is set to MONAI's command line, so the run record and the start checks read it as in
    a real run; the bundle's logging file is left out (it would replace the test session's handlers).
    """
    argv = [str(Path(monai.bundle.__file__).with_name("__main__.py")), *cmd[3:]]
    kwargs = dict(cli_overrides(argv) or {})
    kwargs.pop("logging_file", None)
    saved, sys.argv = sys.argv, argv
    try:
        monai.bundle.run(**kwargs)
        code = 0
    except SystemExit as err:  # the bundles' guards exit with their message (status 1), as the process would
        if not isinstance(err.code, int | None):
            print(err.code, file=sys.stderr)
        code = err.code if isinstance(err.code, int) else 0 if err.code is None else 1
    except Exception:  # noqa: BLE001 - reported as a failed command, as the process would
        traceback.print_exc()
        code = 1
    finally:
        sys.argv = saved
    raise _Finished(code)


def run_in_process(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """``medmtl ARGV`` in this process, returning its exit status (a runner for ``run_cv`` / ``run_experts``).

    ``medmtl run`` builds the same MONAI command as on the command line and runs it here instead of
    exec'ing it. ``env`` is not applied: set what the command needs in ``os.environ``.
    """
    with mock.patch.object(os, "execv", _monai_here):
        try:
            return main(list(argv))
        except _Finished as finished:
            return finished.code
