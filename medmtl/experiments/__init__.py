"""Experiment tooling around bundle runs: sweeps over them and what a finished run produced.

- :mod:`~medmtl.experiments.learning_curve`: a label-fraction sweep of a bundle (``medmtl learning-curve``);
- :mod:`~medmtl.experiments.summary`: the plain-text summary of a run folder (``medmtl summary``).

Submodules are imported on use: the learning curve pulls in MONAI's bundle parser and matplotlib,
which ``medmtl summary`` does not need.
"""

from __future__ import annotations

__all__: list[str] = []
