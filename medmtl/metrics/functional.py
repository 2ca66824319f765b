"""Metric arithmetic shared by the online handler and the offline report.

The ignite handler (during validation) and the report (after a run, or rebuilt from disk) must
give the same numbers, so both call these functions on the same per-case arrays. The
segmentation scores come straight from MONAI (``compute_dice``, ``compute_iou``,
``compute_hausdorff_distance``, ``get_confusion_matrix``) and are reduced with MONAI's NaN-aware
``do_metric_reduction``; AUROC is MONAI's ``compute_roc_auc`` and the thresholded binary scores
are MONAI's ``compute_confusion_matrix_metric``. What MONAI lacks comes from scikit-learn: Cohen's
kappa, the K x K multiclass confusion matrix, balanced accuracy and macro F1. Only the
case-resampling bootstrap is written here: neither library has a vectorised one (MONAI's AUROC
loops in Python and scikit-learn scores one resample per call, far too slow for 1000 resamples).

Which metrics a task gets, and which one is primary, depends only on its kind, never its name.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_roc_auc,
    get_confusion_matrix,
)
from monai.metrics.utils import do_metric_reduction
from monai.networks.utils import one_hot
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from medmtl.data.tasks import Task, TaskKind

__all__ = [
    "SEGMENTATION_METRICS",
    "LABEL_METRICS",
    "MULTICLASS_METRICS",
    "metric_names",
    "primary_metric",
    "higher_is_better",
    "safe_key",
    "segmentation_case_metrics",
    "reduce_segmentation",
    "auroc",
    "label_metrics",
    "multiclass_confusion_matrix",
    "multiclass_metrics",
    "bootstrap_ci",
    "resampled_nanmean",
    "rows_nanmean",
    "resampled_auroc",
    "resampled_balanced_accuracy",
]

#: per-case segmentation scores, foreground classes only (MONAI, ``include_background=False``).
SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "precision", "recall")
#: binary and multilabel scores (per label, macro mean over labels for multilabel).
LABEL_METRICS: tuple[str, ...] = ("auroc", "accuracy", "f1", "sensitivity", "specificity", "kappa")
#: multiclass scores.
MULTICLASS_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "kappa", "auroc")

_PRIMARY = {
    TaskKind.SEGMENTATION: "dice",
    TaskKind.BINARY: "auroc",
    TaskKind.MULTILABEL: "auroc",
    TaskKind.MULTICLASS: "balanced_accuracy",
}
_LOWER_IS_BETTER = ("hd95",)
#: MONAI names of the thresholded scores computed from (tp, fp, tn, fn).
_CONFUSION_NAMES = {
    "accuracy": "accuracy",
    "f1": "f1 score",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}


def metric_names(task: Task) -> tuple[str, ...]:
    """Names of the headline metrics of ``task`` (keys ``<task>/<name>``), decided by its kind."""
    if task.kind == TaskKind.SEGMENTATION:
        return SEGMENTATION_METRICS
    if task.kind == TaskKind.MULTICLASS:
        return MULTICLASS_METRICS
    return LABEL_METRICS


def primary_metric(task: Task) -> tuple[str, bool]:
    """The metric that summarises ``task``, and whether higher is better.

    Dice for segmentation, AUROC for binary / multilabel (mean over labels), balanced accuracy
    for multiclass.

    Example::

        primary_metric(Task(name="lesion", kind="segmentation", classes=["bg", "lesion"]))
        # ("dice", True)
    """
    name = _PRIMARY[task.kind]
    return name, higher_is_better(name)


def higher_is_better(metric: str) -> bool:
    """``False`` for distances (``hd95`` and its per-class ``hd95_<class>`` variants), else ``True``."""
    base = metric.split("/")[-1]
    return not any(base == m or base.startswith(f"{m}_") for m in _LOWER_IS_BETTER)


def safe_key(name: str) -> str:
    """A class / label name usable in a metric key (MLflow accepts ``[A-Za-z0-9_./ -]``)."""
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in str(name))


# --------------------------------------------------------------------------- segmentation


def _as_onehot(x: torch.Tensor, num_classes: int, what: str, task: str) -> torch.Tensor:
    """``(B, C, *spatial)`` logits/probabilities/one-hot or ``(B, 1, *spatial)`` label map -> binary one-hot."""
    if x.ndim < 3:
        raise ValueError(
            f"segmentation task '{task}': {what} has shape {tuple(x.shape)}; expected (B, C, *spatial) "
            f"with C={num_classes} or a label map (B, 1, *spatial)"
        )
    channels = x.shape[1]
    if channels == 1:
        return one_hot(x.round().long(), num_classes=num_classes, dim=1)
    if channels == num_classes:
        if what == "label":  # already one-hot
            return (x > 0.5).to(torch.uint8)
        return one_hot(x.argmax(dim=1, keepdim=True), num_classes=num_classes, dim=1)
    raise ValueError(
        f"segmentation task '{task}': {what} has {channels} channels; expected {num_classes} "
        f"(one per class of {task}) or 1 (a label map)"
    )


def segmentation_case_metrics(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    metrics: Sequence[str] = SEGMENTATION_METRICS,
    hd_percentile: float = 95.0,
    spacing: float | Sequence[float] | None = None,
    task: str = "task",
) -> dict[str, torch.Tensor]:
    """Per-case, per-foreground-class scores of a batch, computed by MONAI.

    The prediction is turned into a one-hot map by argmax over channels; background (class 0)
    is left out. As in MONAI, Dice and IoU are NaN when the ground truth of a class is empty;
    HD95 is NaN when either mask is empty; precision is NaN when nothing is predicted and recall
    when the ground truth is empty.

    Args:
        y_pred: ``(B, C, *spatial)`` logits or probabilities, or a ``(B, 1, *spatial)`` label map.
        y: ``(B, 1, *spatial)`` integer label map, or a ``(B, C, *spatial)`` one-hot map.
        num_classes: C, classes including background.
        metrics: which of :data:`SEGMENTATION_METRICS` to compute.
        hd_percentile: percentile of the Hausdorff distance (95 gives HD95).
        spacing: voxel spacing for the Hausdorff distance (``None``: 1 voxel).
        task: task name, for error messages.

    Returns:
        ``{metric: (B, C - 1) float tensor}`` on the device of ``y_pred``.

    Raises:
        ValueError: for an unknown metric name or shapes that do not match.
    """
    unknown = [m for m in metrics if m not in SEGMENTATION_METRICS]
    if unknown:
        raise ValueError(f"segmentation task '{task}': unknown metrics {unknown}; choose from {SEGMENTATION_METRICS}")
    y_pred = torch.as_tensor(y_pred)
    y = torch.as_tensor(y, device=y_pred.device)
    pred_oh = _as_onehot(y_pred, num_classes, "prediction", task)
    true_oh = _as_onehot(y, num_classes, "label", task)
    if pred_oh.shape != true_oh.shape:
        raise ValueError(
            f"segmentation task '{task}': prediction spatial shape {tuple(y_pred.shape[2:])} differs from "
            f"label spatial shape {tuple(y.shape[2:])}; invert resampling/cropping before computing metrics"
        )
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():  # empty masks are expected: they give NaN, counted by not_nans
        warnings.simplefilter("ignore")
        if "dice" in metrics:
            out["dice"] = compute_dice(pred_oh, true_oh, include_background=False, ignore_empty=True)
        if "iou" in metrics:
            out["iou"] = compute_iou(pred_oh, true_oh, include_background=False, ignore_empty=True)
        if "hd95" in metrics:
            out["hd95"] = compute_hausdorff_distance(
                pred_oh, true_oh, include_background=False, percentile=hd_percentile, spacing=spacing
            )
        if "precision" in metrics or "recall" in metrics:
            counts = get_confusion_matrix(pred_oh, true_oh, include_background=False)
            for name in ("precision", "recall"):
                if name in metrics:
                    out[name] = compute_confusion_matrix_metric(name, counts)
    return {k: out[k].float().to(y_pred.device) for k in metrics}


def reduce_segmentation(values: np.ndarray) -> tuple[float, int, np.ndarray, np.ndarray]:
    """NaN-aware reduction of per-case, per-class scores with MONAI's ``do_metric_reduction``.

    Args:
        values: ``(N, F)`` scores, NaN where undefined (empty ground truth).

    Returns:
        ``(mean, not_nans, per_class_mean, per_class_not_nans)``: ``mean`` is MONAI's ``"mean"``
        reduction (class mean per case, then mean over cases with at least one value); NaN (not
        0 as MONAI returns) when no value counts.
    """
    f = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if f.ndim != 2:
        raise ValueError(f"expected per-case, per-class scores of shape (N, F), got {tuple(f.shape)}")
    if f.shape[0] == 0:
        nan = np.full(f.shape[1], np.nan)
        return math.nan, 0, nan, np.zeros(f.shape[1], dtype=int)
    mean, not_nans = do_metric_reduction(f.clone(), "mean")
    per_class, per_class_nn = do_metric_reduction(f.clone(), "mean_batch")
    per_class_np = per_class.numpy().astype(np.float64)
    per_class_nn_np = per_class_nn.numpy().astype(int)
    per_class_np[per_class_nn_np == 0] = np.nan
    n = int(not_nans.item())
    return (float(mean.item()) if n > 0 else math.nan), n, per_class_np, per_class_nn_np


# --------------------------------------------------------------------------- classification


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of one label (MONAI ``compute_roc_auc``); NaN with one class only."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64).reshape(-1))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64).reshape(-1))
    if s.numel() == 0 or torch.unique(y).numel() < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_roc_auc(s, y))


def _kappa(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa (scikit-learn); NaN without cases or when chance agreement is 1."""
    if not len(labels):
        return math.nan
    with warnings.catch_warnings():  # chance agreement 1 (one class only): NaN, scikit-learn warns
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(labels, predictions, labels=np.arange(num_classes)))


def label_metrics(
    probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5, label_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Binary / multilabel scores: AUROC plus accuracy, F1, sensitivity, specificity, kappa at ``threshold``.

    Args:
        probabilities: ``(N, K)`` sigmoid probabilities.
        labels: ``(N, K)`` 0/1 labels.
        threshold: probability at or above which a case is called positive.
        label_names: K names; with K > 1 every score is also given per label as ``<metric>_<name>``
            and the headline value is the NaN-aware mean over labels.

    Returns:
        ``{metric: value}`` including ``num_cases``; NaN where undefined (e.g. AUROC with one class).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    p = p[:, None] if p.ndim == 1 else p
    y = np.asarray(labels, dtype=np.float64).reshape(p.shape)
    k = p.shape[1]
    names = [safe_key(n) for n in (label_names or [str(i) for i in range(k)])]
    per_label: dict[str, np.ndarray] = {"auroc": np.array([auroc(p[:, j], y[:, j]) for j in range(k)])}
    if len(p):
        hard = (p >= threshold).astype(np.int64)
        counts = get_confusion_matrix(torch.as_tensor(hard), torch.as_tensor(y), include_background=True)
        counts = counts.sum(dim=0).double()  # (K, 4): tp, fp, tn, fn
        for ours, monai_name in _CONFUSION_NAMES.items():
            per_label[ours] = compute_confusion_matrix_metric(monai_name, counts).numpy().astype(np.float64)
        truth = y.astype(np.int64)
        per_label["kappa"] = np.array([_kappa(truth[:, j], hard[:, j], 2) for j in range(k)])
    else:
        for name in LABEL_METRICS[1:]:
            per_label[name] = np.full(k, np.nan)
    out: dict[str, float] = {}
    for name in LABEL_METRICS:
        out[name] = _nanmean(per_label[name])
        if k > 1:
            for j, label in enumerate(names):
                out[f"{name}_{label}"] = float(per_label[name][j])
    out["num_cases"] = float(len(p))
    return out


def multiclass_confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K counts (scikit-learn), rows the true class and columns the predicted class; zeros without cases."""
    t = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if not len(t):  # scikit-learn refuses empty input
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return confusion_matrix(t, p, labels=np.arange(num_classes))


def correct_priors(probabilities: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(N, K)`` probabilities multiplied by per-class ``weights`` and renormalised per row.

    Equal weights give the probabilities back unchanged. A row of zeros stays uniform.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    q = p * np.asarray(weights, dtype=np.float64)
    total = q.sum(axis=-1, keepdims=True)
    return np.divide(q, total, out=np.full_like(q, 1.0 / q.shape[-1]), where=total > 0)


def multiclass_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    predictions: np.ndarray | None = None,
) -> dict[str, float]:
    """Multiclass scores from softmax probabilities and class indices (prediction: argmax unless given).

    Accuracy, balanced accuracy (mean recall over the classes in the truth), macro F1 (mean over
    the classes in the truth or the prediction) and kappa are scikit-learn's; ``auroc`` is the
    one-vs-rest mean over classes that occur. Per-class recall and F1 are also given as
    ``recall_<class>`` / ``f1_<class>`` (NaN for a class with no case to score it on).

    Args:
        probabilities: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices.
        class_names: K names for the per-class keys.
        predictions: ``(N,)`` decided class indices (e.g. after a prior correction) for the
            decision metrics; AUROC always ranks ``probabilities``.

    Returns:
        ``{metric: value}`` including ``num_cases``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    k = p.shape[1]
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    names = [safe_key(n) for n in (class_names or [str(i) for i in range(k)])]
    aucs = np.array([auroc(p[:, j], y == j) for j in range(k)])
    out = {name: math.nan for name in MULTICLASS_METRICS}
    recall = f1 = np.full(k, np.nan)
    if len(y):  # scikit-learn refuses empty input
        pred = p.argmax(axis=1) if predictions is None else np.asarray(predictions, dtype=np.int64).reshape(-1)
        with warnings.catch_warnings():  # classes absent from a small validation set are expected: NaN
            warnings.simplefilter("ignore")
            _, recall, f1, _ = precision_recall_fscore_support(
                y, pred, labels=np.arange(k), average=None, zero_division=np.nan
            )
            out["accuracy"] = float(accuracy_score(y, pred))
            out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
            out["f1_macro"] = float(f1_score(y, pred, average="macro"))
        out["kappa"] = _kappa(y, pred, k)
    out["auroc"] = _nanmean(aucs)
    for j, name in enumerate(names):
        out[f"recall_{name}"] = float(recall[j])
        out[f"f1_{name}"] = float(f1[j])
    out["num_cases"] = float(len(y))
    return out


def _nanmean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    num_cases: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_elements: int = 4_000_000,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval, resampling cases with replacement.

    Args:
        statistic: maps resampled case indices ``(R, N)`` to R statistic values (NaN allowed:
            e.g. AUROC of a resample holding one class only; such resamples are dropped).
        num_cases: N.
        n_resamples: number of resamples R.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the NumPy generator (same seed, same interval).
        max_elements: resamples are drawn in chunks of at most this many indices (memory bound).

    Returns:
        ``(low, high)``; ``(nan, nan)`` without cases or without any finite resample.

    Raises:
        ValueError: for ``confidence`` outside (0, 1) or ``n_resamples`` < 1.

    Example::

        values = np.array([0.7, 0.8, 0.9])
        bootstrap_ci(lambda idx: values[idx].mean(axis=1), len(values))
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if num_cases < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, max_elements // num_cases)
    stats = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, num_cases, size=(min(chunk, n_resamples - start), num_cases))
        stats.append(np.asarray(statistic(idx), dtype=np.float64).reshape(-1))
    values = np.concatenate(stats)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def resampled_nanmean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """NaN-aware mean of ``values[idx]`` per resample row (NaN where a row holds no value)."""
    return rows_nanmean(np.asarray(values, dtype=np.float64)[idx])


def rows_nanmean(v: np.ndarray) -> np.ndarray:
    """NaN-aware mean of each row of a 2-D array (NaN for rows without a value), without warnings."""
    v = np.asarray(v, dtype=np.float64)
    ok = ~np.isnan(v)
    count = ok.sum(axis=1)
    total = np.where(ok, v, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def resampled_auroc(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of each resample row (ties count one half, as in MONAI / scikit-learn).

    Why our own: scikit-learn's ``roc_auc_score`` sorts once per resample. Scores are ranked once; each resample only re-weights the tied-score bins, so R resamples
    cost O(R N) instead of R sorts.
    """
    uniq, bins = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    n_bins = len(uniq)
    r = idx.shape[0]
    flat = (np.arange(r)[:, None] * n_bins + bins.reshape(-1)[idx]).ravel()
    pos_w = (np.asarray(labels, dtype=np.float64).reshape(-1)[idx] > 0.5).ravel().astype(np.float64)
    pos = np.bincount(flat, weights=pos_w, minlength=r * n_bins).reshape(r, n_bins)
    neg = np.bincount(flat, weights=1.0 - pos_w, minlength=r * n_bins).reshape(r, n_bins)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def resampled_balanced_accuracy(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, idx: np.ndarray
) -> np.ndarray:
    """Balanced accuracy (mean recall over classes present in the truth) of each resample row.

    Why our own: scikit-learn's ``balanced_accuracy_score`` scores one resample per call; this
    counts all R resamples in one ``bincount``.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    correct = (y == np.asarray(predictions, dtype=np.int64).reshape(-1)).astype(np.float64)
    r = idx.shape[0]
    flat = (np.arange(r)[:, None] * num_classes + y[idx]).ravel()
    hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=r * num_classes).reshape(r, num_classes)
    support = np.bincount(flat, minlength=r * num_classes).reshape(r, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    return rows_nanmean(recall)
