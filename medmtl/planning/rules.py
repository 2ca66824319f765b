"""The plan's rules: what the fingerprint says about each setting, as choices with reasons.

Pure functions of the fingerprint (no files, no devices), so each rule is tested on its own; the
measured choices (size, batch, epochs) are made by :mod:`medmtl.planning.plan` from trial steps.
Where a rule is a tuned default rather than a law, its reason says where it was measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medmtl.planning.plan_file import Choice

__all__ = [
    "SIZE_DIVISOR",
    "MIN_SIDE",
    "MIN_EPOCHS",
    "MIN_STEPS",
    "intensity_choices",
    "network_choices",
    "task_choices",
    "augmentation_choices",
    "size_ladder",
    "preferred_batch_size",
    "main_input",
]

SIZE_DIVISOR = 16
"""Input sizes are multiples of 2^4: the backbones downsample four times."""
MIN_SIDE = 2 * SIZE_DIVISOR
"""Smallest side: 2 x 2 (x 2) at the bottleneck, so normalisation layers have more than one value."""
MIN_EPOCHS = 40
"""Fewest epochs a planned size must allow in the time budget (the BUSI recipe ran 47-50 in 10 minutes). A floor
of 50 (BUSI: 128 px and about 70 epochs instead of 160 px and 44) gained Dice only on test images with a
near-copy in training and lost 0.011 on the duplicate-aware split (benchmarks/README.md, "The plan's epoch floor")."""
MIN_STEPS = 250
"""Fewest optimizer steps a planned size must allow (nnU-Net's steps per epoch; tiny datasets need more epochs)."""
_IMAGE_LEVEL = ("binary", "multiclass", "multilabel", "regression")
_PERCENTILE_MODALITIES = {"US", "CR", "DX", "XR", "MG", "RG", "OT", "XC", "SM", "OP"}
_NO_FLIP_MODALITIES = {"CR", "DX", "XR", "MG", "RG"}


def main_input(fingerprint: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The first input of the spec and its summary (multi-view specs share sizes across views)."""
    name, summary = next(iter(fingerprint["inputs"].items()))
    return name, summary


def _kinds(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(task["kind"]) for name, task in fingerprint["tasks"].items()}


def intensity_choices(fingerprint: Mapping[str, Any]) -> list[Choice]:
    """Normalisation per modality: CT clipped and z-scored with dataset values, MR z-scored, pictures by percentiles."""
    modality = str(fingerprint["spec"].get("modality") or "").upper()
    _, summary = main_input(fingerprint)
    stats = summary["intensity"]
    if modality == "CT":
        values = {
            "low": round(float(stats["p00_5"]), 3),
            "high": round(float(stats["p99_5"]), 3),
            "mean": round(float(stats["mean"]), 3),
            "std": round(max(float(stats["std"]), 1e-6), 3),
        }
        return [
            Choice(
                "intensity",
                "clip_zscore",
                f"CT: Hounsfield units mean the same in every scan, so one mapping for the dataset (nnU-Net): clip "
                f"to the {stats.get('region', 'image')} 0.5-99.5th percentiles, z-score with its mean and std",
            ),
            Choice("intensity_stats", values, "measured in the fingerprint (fingerprint.json, inputs.intensity)"),
        ]
    if modality == "MR":
        return [Choice("intensity", "zscore", "MR: intensities have no absolute scale; z-score per image (nnU-Net)")]
    if modality in _PERCENTILE_MODALITIES or fingerprint["spec"]["spatial_dims"] == 2:
        return [
            Choice(
                "intensity",
                "percentile",
                f"{modality or '2D'} images: gain and contrast vary per device and image; 0.5-99.5th percentiles "
                "to [0, 1] per image (robust to calipers and text burnt in)",
            )
        ]
    return [Choice("intensity", "zscore", f"{modality or 'unknown modality'} 3D: z-score per image")]


def network_choices(fingerprint: Mapping[str, Any], device_type: str, presets: Mapping[str, Any]) -> list[Choice]:
    """Backbone and width: ResUNet in 2D, BasicUNet in 3D; narrow on the CPU, wide on a GPU.

    ``presets`` is the bundle's ``backbone_presets`` (a bundle without them builds its own network
    and gets no backbone choice).
    """
    dims = int(fingerprint["spec"]["spatial_dims"])
    base = 32 if device_type == "cuda" else (16 if dims == 2 else 8)
    where = "a GPU" if device_type == "cuda" else "the CPU"
    if dims == 2 and "resunet" in presets:
        channels = [base * 2**i for i in range(5)]
        return [
            Choice(
                "backbone",
                "resunet",
                "2D segmentation + diagnosis: MONAI's residual UNet beat the BasicUNet preset on BUSI "
                "(benchmarks/README.md); its encoder feeds the image-level heads",
            ),
            Choice(
                "backbone_presets::resunet::channels",
                channels,
                f"width {base} at full resolution on {where} (the BUSI recipe's 16..256 on the CPU)",
            ),
            Choice(
                "",
                None,
                "no deep supervision (--deep_supervision 2 turns it on): on BUSI it cost 0.011 Dice per image on "
                "the duplicate-aware split (+0.005 on the fixed split; benchmarks/README.md)",
            ),
        ]
    if dims == 3 and "unet" in presets:
        features = [base, base, 2 * base, 4 * base, 8 * base, base]
        return [
            Choice(
                "backbone",
                "unet",
                "3D: MONAI's BasicUNet (nnU-Net-like plain UNet) trains fastest per voxel; brain extraction "
                "reached Dice 0.935 with it (bundles/brain_mri_mtl/docs)",
            ),
            Choice(
                "backbone_presets::unet::features",
                features,
                f"width {base} on {where}: 3D steps cost ~{'8x' if device_type != 'cuda' else '1x'} what "
                "the time budget allows at full width",
            ),
            Choice(
                "",
                None,
                "no deep supervision (--deep_supervision 2 turns it on): on the brain stand-ins it gave Dice 0.921 "
                "vs 0.927 over 3 seeds (benchmarks/README.md)",
            ),
        ]
    return []


def task_choices(fingerprint: Mapping[str, Any], spec_weights: Mapping[str, Mapping[str, Any]]) -> list[Choice]:
    """Task weights, class weights and ``pos_weight`` from the label counts.

    Args:
        fingerprint: the dataset fingerprint.
        spec_weights: per task the spec's own ``class_weights`` / ``pos_weight`` settings (kept when set).
    """
    kinds = _kinds(fingerprint)
    dense = [name for name, kind in kinds.items() if kind == "segmentation"]
    image_level = [name for name, kind in kinds.items() if kind in _IMAGE_LEVEL]
    labelled = {name: int(task.get("labelled", 0)) for name, task in fingerprint["tasks"].items()}
    trained = _trained_tasks(fingerprint, labelled)
    choices = [
        Choice(
            "weighting",
            "fixed",
            "fixed task weights: on BUSI they beat uncertainty weighting on the diagnosis (0.820 vs 0.768 "
            "balanced accuracy, same Dice; benchmarks/README.md)",
        )
    ]
    if dense and image_level:
        weights = {name: 0.5 for name in image_level}
        choices.append(
            Choice(
                "loss::weighting_kwargs",
                {"weights": weights},
                f"segmentation ({', '.join(dense)}) at 1, image-level tasks at 0.5: the shared encoder then "
                "serves the masks without losing the diagnosis (BUSI: +0.03 balanced accuracy over 1/1)",
            )
        )
    untrained = sorted(name for name in kinds if name not in trained)
    if untrained and trained:
        choices.append(
            Choice(
                "validate::key_metric::mean_primary::tasks",
                f"$[t for t in @tasks if t.name in {sorted(trained)!r}]",
                f"no training case is labelled for {', '.join(untrained)}: its head gets no gradient, so its "
                "validation score is noise and must not choose best.pt (the trained tasks do)",
            )
        )
    choices += _imbalance_choices(fingerprint, kinds, labelled, spec_weights)
    return choices


def _trained_tasks(fingerprint: Mapping[str, Any], labelled: Mapping[str, int]) -> list[str]:
    """Tasks with a label in the training split (per case, when the fingerprint lists cases), else in any."""
    cases = fingerprint.get("cases") or {}
    if not cases:
        return [name for name, count in labelled.items() if count > 0]
    return [
        name
        for name in labelled
        if any(c.get("split") == "train" and c["tasks"].get(name, {}).get("labelled") for c in cases.values())
    ]


def _imbalance_choices(
    fingerprint: Mapping[str, Any],
    kinds: Mapping[str, str],
    labelled: Mapping[str, int],
    spec_weights: Mapping[str, Mapping[str, Any]],
) -> list[Choice]:
    """``loss::class_weights`` / ``loss::pos_weight`` for imbalanced tasks the spec leaves unweighted.

    The loss takes one dict per option, so a planned dict also carries the tasks the spec weights
    (its numbers, or its ``auto`` computed on all labelled cases).
    """
    class_weights: dict[str, list[float]] = {}
    pos_weights: dict[str, list[float]] = {}
    reasons: list[str] = []
    planned = False
    for name, kind in kinds.items():
        counts = [int(c) for c in fingerprint["tasks"][name].get("class_counts") or []]
        own = spec_weights.get(name, {})
        if not counts or not labelled[name]:
            continue
        if kind == "multiclass":
            present = [c for c in counts if c > 0]
            ratio = max(present) / min(present) if present else 1.0
            balanced = [round(sum(counts) / (len(counts) * c), 4) if c else 1.0 for c in counts]
            given = own.get("class_weights")
            if given is not None:
                class_weights[name] = balanced if given == "auto" else [float(v) for v in given]
                reasons.append(f"{name}: the spec's class_weights ({given}) kept")
            elif ratio >= 1.5:
                class_weights[name] = balanced
                planned = True
                reasons.append(f"{name}: classes {counts} (largest/smallest {ratio:.1f}): balanced weights n/(K n_k)")
        elif kind in ("binary", "multilabel"):
            negatives = (
                [labelled[name] - c for c in counts[-1:]] if kind == "binary" else [labelled[name] - c for c in counts]
            )
            positives = counts[-1:] if kind == "binary" else counts
            ratios = [round(n / p, 4) if p else 1.0 for n, p in zip(negatives, positives, strict=True)]
            given = own.get("pos_weight")
            if given is not None:
                pos_weights[name] = (
                    ratios if given == "auto" else [float(v) for v in (given if isinstance(given, list) else [given])]
                )
                reasons.append(f"{name}: the spec's pos_weight ({given}) kept")
            elif max(ratios) >= 1.5:
                pos_weights[name] = ratios
                planned = True
                reasons.append(f"{name}: positives {positives} of {labelled[name]}: pos_weight negatives/positives")
    if not planned:
        return [Choice("", None, "; ".join(reasons))] if reasons else []
    choices = []
    if class_weights:
        choices.append(Choice("loss::class_weights", class_weights, "; ".join(r for r in reasons if "class" in r)))
    if pos_weights:
        choices.append(Choice("loss::pos_weight", pos_weights, "; ".join(r for r in reasons if "pos_weight" in r)))
    return choices


def augmentation_choices(fingerprint: Mapping[str, Any], bundle_rotation: float | None = None) -> list[Choice]:
    """Flips per modality (none where anatomy is lateralised, left-right only for ultrasound); the bundle's rotations.

    ``bundle_rotation`` is the bundle's ``train::preprocessing::rotate_degrees``, only for the note: the
    plan does not override it, so a bundle that chose a range for its images (chest radiographs 7 degrees,
    knee MRI 10) keeps it and the value stays written in one place.
    """
    modality = str(fingerprint["spec"].get("modality") or "").upper()
    dims = int(fingerprint["spec"]["spatial_dims"])
    if modality == "US":
        flips, why = [0], "ultrasound: left-right mirror only (the probe is always at the top)"
    elif modality in _NO_FLIP_MODALITIES:
        flips, why = [], f"{modality} radiographs: no flips (heart side, markers and laterality matter)"
    else:
        flips, why = list(range(dims)), f"{modality or 'volumes'}: mirror every axis (nnU-Net)"
    degrees = "" if bundle_rotation is None else f" (up to {float(bundle_rotation):g} degrees)"
    return [
        Choice("train::preprocessing::flip_axes", flips, why),
        Choice(
            "",
            None,
            f"rotations: the bundle's own range{degrees}, not overridden (BUSI without rotations: -0.010 lesion "
            "Dice on the duplicate-aware split, benchmarks/README.md)",
        ),
    ]


def size_ladder(
    fingerprint: Mapping[str, Any],
    max_side: int = 512,
    max_roi: int = 128,
    factors: Sequence[float] = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25),
) -> list[dict[str, Any]]:
    """Candidate input sizes (and 3D voxel sizes), finest first.

    2D: a square of the median image's longer side, scaled down step by step, a multiple of
    :data:`SIZE_DIVISOR`: 2D images are resized (not cropped) to one shape, so a square keeps the
    detail of both axes for landscape and portrait images alike (40 of BUSI's 780 are portrait). 3D: the median voxel size coarsened step by step (1x to 4x; for
    anisotropic data only the fine axes first, until they reach the coarse one, as nnU-Net does),
    with the ROI covering the median volume at that voxel size (capped at ``max_roi`` per axis).
    """
    _, summary = main_input(fingerprint)
    shape = [float(v) for v in summary["median_shape"]]
    dims = int(fingerprint["spec"]["spatial_dims"])
    if dims == 2:  # a square: every image is resized to one shape whatever its aspect (portrait or landscape)
        top = min(max(shape), max_side)
        start = [top] * 2
        seen, ladder = set(), []
        for factor in factors:
            size = tuple(max(MIN_SIDE, int(round(s * factor / SIZE_DIVISOR)) * SIZE_DIVISOR) for s in start)
            if size not in seen:
                seen.add(size)
                ladder.append({"spatial_size": list(size), "pixdim": None})
        return ladder
    spacing = [float(v) for v in summary["median_spacing"]]
    extent = [s * d for s, d in zip(shape, spacing, strict=True)]
    coarse = max(spacing)
    ladder, seen = [], set()
    for multiple in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0):
        if max(spacing) / min(spacing) > 3:  # anisotropic: fine axes first, up to the coarse one
            target = [min(coarse, s * multiple) if s < coarse else s * max(1.0, multiple / 3) for s in spacing]
        else:
            target = [s * multiple for s in spacing]
        target = [round(t, 3) for t in target]
        roi = tuple(
            min(max_roi, max(MIN_SIDE, math.ceil(e / t / SIZE_DIVISOR) * SIZE_DIVISOR))
            for e, t in zip(extent, target, strict=True)
        )
        key = (tuple(target), roi)
        if key not in seen:
            seen.add(key)
            ladder.append({"spatial_size": list(roi), "pixdim": target})
    return ladder


def preferred_batch_size(num_train: int, dims: int) -> int:
    """Samples per step before memory has its say: 2 in 3D (nnU-Net); in 2D about 40 steps per epoch, 2..32.

    Why not the largest that fits: at a fixed number of epochs, larger batches mean fewer optimizer
    steps; the BUSI recipe (627 training images) used 16. Never more than the training cases: a
    batch of 2 from one case is a step of 1, and timing 2 would halve the epochs the budget allows.
    """
    if dims == 3:
        return max(1, min(2, num_train))
    target = max(2, min(32, num_train // 40))
    return min(2 ** int(round(math.log2(target))), max(1, num_train))
