"""The task key contract: the flat keys every layer uses to carry a task through dicts.

Why one module: datalists, transforms, batches, the engines' outputs, the losses, the metrics and
the writers all read and write ``<task>_present``, ``pred_<task>``, ``label_<task>``, ``prob_<task>``
and ``loss_<task>``; a key spelled differently in one place silently drops a task. The names a task
may not take follow from the same constants, so the reserved-name check cannot drift from the keys.
It imports nothing from medmtl, so every layer can depend on it.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "PRED_PREFIX",
    "LABEL_PREFIX",
    "PROB_PREFIX",
    "LOSS_PREFIX",
    "PRESENT_SUFFIX",
    "META_DICT_SUFFIX",
    "TRANSFORMS_SUFFIX",
    "SUPERVISED_LOSS_KEY",
    "PSEUDO_LABEL_LOSS_KEY",
    "CONSISTENCY_LOSS_KEY",
    "ENGINE_LOSS_KEYS",
    "FOLD_MEMBERS_KEY",
    "MC_DROPOUT_KEY",
    "TTA_PASSES_KEY",
    "DEEP_SUPERVISION_PREFIX",
    "SPREAD_KEYS",
    "RESERVED_NAMES",
    "RESERVED_PREFIXES",
    "RESERVED_SUFFIXES",
    "present_key",
    "pred_key",
    "label_key",
    "prob_key",
    "loss_key",
    "deep_supervision_key",
    "reserved_name_error",
]

PRED_PREFIX = "pred_"
"""``pred_<task>``: a task's logits in a flattened evaluator output."""
LABEL_PREFIX = "label_"
"""``label_<task>``: a task's label in a flattened evaluator output."""
PROB_PREFIX = "prob_"
"""``prob_<task>``: a task's probabilities (evaluator output with activation)."""
LOSS_PREFIX = "loss_"
"""``loss_<task>``: a task's loss in a trainer output."""
PRESENT_SUFFIX = "_present"
"""``<task>_present``: whether a case / sample is labelled for the task (datalist, batch, output)."""
META_DICT_SUFFIX = "_meta_dict"
"""MONAI's per-key metadata (``<key>_meta_dict``)."""
TRANSFORMS_SUFFIX = "_transforms"
"""MONAI's per-key transform trace (``<key>_transforms``)."""

SUPERVISED_LOSS_KEY = "loss_supervised"
PSEUDO_LABEL_LOSS_KEY = "loss_pseudo_label"
CONSISTENCY_LOSS_KEY = "loss_consistency"
ENGINE_LOSS_KEYS = (SUPERVISED_LOSS_KEY, PSEUDO_LABEL_LOSS_KEY, CONSISTENCY_LOSS_KEY)
"""Keys of the semi-supervised iteration's output that a task's ``loss_<task>`` would overwrite."""
DEEP_SUPERVISION_PREFIX = "deep_supervision_"
"""``deep_supervision_<level>_<task>``: a segmentation task's logits at a coarser decoder level (training only)."""

FOLD_MEMBERS_KEY = "fold_members"
"""Network output (:class:`~medmtl.networks.FoldEnsemble`): ``{task: (B, folds, C) logits}`` of every fold."""
MC_DROPOUT_KEY = "mc_dropout_samples"
"""Inferer output (Monte Carlo dropout): ``{task: (B, samples, C) logits}`` of every dropout sample."""
TTA_PASSES_KEY = "tta_passes"
"""Inferer output (mirroring TTA): ``{task: (B, mirror images, C) logits}`` of every mirror image."""
SPREAD_KEYS = {FOLD_MEMBERS_KEY: "fold", MC_DROPOUT_KEY: "mc_dropout", TTA_PASSES_KEY: "tta"}
"""Outputs holding several predictions of one case per image-level task, and the column stem of their spread."""

RESERVED_NAMES = (
    "case_id",  # every case dict (datalist), batch and engine output
    "split",  # case table (datalist, splits)
    "group",  # case table: the patient (datalist, splits)
    "fold",  # case table under k-fold splits (splits)
    "image",  # MONAI's CommonKeys: engine output; the default input name (allowed for an input)
    "label",  # MONAI's CommonKeys: engine output (targets)
    "pred",  # MONAI's CommonKeys: engine output (logits)
    "loss",  # MONAI's CommonKeys: engine output (total loss)
    *SPREAD_KEYS,  # network / inferer outputs next to the tasks' logits
)
"""Keys medmtl itself writes into case dicts, batches and engine outputs: no task or input may take them."""
RESERVED_PREFIXES = (PRED_PREFIX, LABEL_PREFIX, PROB_PREFIX, LOSS_PREFIX, DEEP_SUPERVISION_PREFIX)
"""Flat per-task keys of evaluator outputs (``FlattenTaskOutputsd``, metrics), per-task losses (``loss_<task>``)
and deeply supervised logits (:func:`deep_supervision_key`)."""
RESERVED_SUFFIXES = (PRESENT_SUFFIX, META_DICT_SUFFIX, TRANSFORMS_SUFFIX)
"""``<task>_present`` flags (:func:`present_key`) and MONAI's per-key metadata / transform-trace keys."""


def present_key(task_name: str) -> str:
    """Datalist/batch key of the per-sample flag saying whether ``task_name`` is labelled."""
    return f"{task_name}{PRESENT_SUFFIX}"


def pred_key(task_name: str) -> str:
    """Key of a task's logits in a flattened evaluator output."""
    return f"{PRED_PREFIX}{task_name}"


def label_key(task_name: str) -> str:
    """Key of a task's label in a flattened evaluator output."""
    return f"{LABEL_PREFIX}{task_name}"


def prob_key(task_name: str) -> str:
    """Key of a task's probabilities in a flattened evaluator output."""
    return f"{PROB_PREFIX}{task_name}"


def loss_key(task_name: str) -> str:
    """Key of a task's loss in a trainer output."""
    return f"{LOSS_PREFIX}{task_name}"


def deep_supervision_key(task_name: str, level: int) -> str:
    """Key of a segmentation task's logits at decoder level ``level`` (1: the first level below the output)."""
    return f"{DEEP_SUPERVISION_PREFIX}{level}_{task_name}"


def reserved_name_error(name: str, what: Literal["task", "input"] = "task") -> str | None:
    """Why ``name`` may not name a task (or, with ``what="input"``, an input), or ``None`` when it may.

    Why: a task or input is stored under its name in the same dicts as medmtl's own keys, so a task
    named ``fold`` would be overwritten by the k-fold split number, and an input named ``case_id`` would
    turn file paths into case ids, silently.
    """
    taken = (
        (name in RESERVED_NAMES and not (what == "input" and name == "image"))
        or name.startswith(RESERVED_PREFIXES)
        or name.endswith(RESERVED_SUFFIXES)
        or (what == "task" and loss_key(name) in ENGINE_LOSS_KEYS)
    )
    if not taken:
        return None
    names = [n for n in RESERVED_NAMES if not (what == "input" and n == "image")]
    if what == "task":
        names += [k.removeprefix(LOSS_PREFIX) for k in ENGINE_LOSS_KEYS]
    return (
        f"{what} name {name!r} is one of medmtl's own keys; reserved: {', '.join(names)}, "
        f"names starting with {' / '.join(RESERVED_PREFIXES)} and names ending in {' / '.join(RESERVED_SUFFIXES)}"
    )
