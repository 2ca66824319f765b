"""PNG figures of the evaluation report, drawn with matplotlib's object API on the Agg canvas.

``matplotlib.figure.Figure`` is used directly (no ``pyplot``), so nothing touches the global
backend or leaks open figures in a long-running trainer, and it works on headless machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from medmtl.metrics.calibration import ReliabilityBins
from medmtl.metrics.functional import safe_key
from medmtl.metrics.results import TaskResult
from medmtl.metrics.uncertainty import RiskCoverage

__all__ = [
    "plot_roc",
    "plot_confusion",
    "plot_dice_box",
    "plot_overlay",
    "plot_history",
    "plot_risk_coverage",
    "plot_reliability",
    "middle_slice",
]

_DPI = 96


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def plot_roc(result: TaskResult, path: Path) -> Path | None:
    """ROC curve of every label of a binary / multilabel task; ``None`` when no label has both classes."""
    p, y = result.probabilities, result.labels
    names = list(result.task.class_names) if p is not None and p.shape[1] > 1 else [result.task.name]
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    drawn = 0
    metrics = result.metrics()
    for j, name in enumerate(names):
        if len(np.unique(y[:, j])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
        auc = metrics["auroc" if len(names) == 1 else f"auroc_{safe_key(name)}"]
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(
        xlabel="1 - specificity", ylabel="sensitivity", title=f"{result.task.name}: ROC", xlim=(0, 1), ylim=(0, 1.02)
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> Path:
    """Confusion matrix (rows truth, columns prediction) with counts, or a row of 2 x 2 matrices."""
    mats = matrix[None] if matrix.ndim == 2 else matrix
    titles = [title] if matrix.ndim == 2 else [f"{title}: {n}" for n in class_names]
    ticks = list(class_names) if matrix.ndim == 2 else ["0", "1"]
    size = max(3.2, 0.6 * len(ticks) + 2.0)
    fig = Figure(figsize=(size * len(mats), size))
    for i, (m, t) in enumerate(zip(mats, titles, strict=True)):
        ax = fig.add_subplot(1, len(mats), i + 1)
        ax.imshow(m, cmap="Blues")
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, str(int(v)), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right")
        ax.set_yticks(range(len(ticks)), ticks)
        ax.set(xlabel="predicted", ylabel="true", title=t)
    return _save(fig, path)


def plot_dice_box(result: TaskResult, path: Path) -> Path:
    """Box plot of per-case Dice per foreground class (NaN cases left out, counts in the labels)."""
    dice = result.case_metrics["dice"]
    names = list(result.task.class_names[1:])
    data = [col[~np.isnan(col)] for col in dice.T]
    fig = Figure(figsize=(max(3.5, 1.3 * len(names) + 1.5), 3.8))
    ax = fig.add_subplot()
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(d)})" for n, d in zip(names, data, strict=True)])
    ax.set(ylabel="Dice", ylim=(-0.02, 1.02), title=f"{result.task.name}: Dice per case")
    return _save(fig, path)


def middle_slice(array: np.ndarray, name: str = "array") -> np.ndarray:
    """A 2D view: singleton dims dropped, the middle slice of the last axis of a 3D volume.

    Raises:
        ValueError: when the array is not 2D or 3D after dropping singleton dims.
    """
    a = np.squeeze(np.asarray(array))
    if a.ndim == 3:
        a = a[..., a.shape[-1] // 2]
    if a.ndim != 2:
        raise ValueError(f"overlay {name} has shape {np.shape(array)}; expected a 2D slice or a 3D volume")
    return a


def plot_overlay(
    case_id: str, image: np.ndarray, true_mask: np.ndarray, pred_mask: np.ndarray, path: Path, title: str = ""
) -> Path:
    """Image with the true mask (left) and the predicted mask (right) drawn over it.

    Raises:
        ValueError: when image and masks are not 2D / 3D or their slices differ in shape.
    """
    img = middle_slice(image, "image").astype(np.float64)
    masks = [middle_slice(true_mask, "true mask"), middle_slice(pred_mask, "predicted mask")]
    for m in masks:
        if m.shape != img.shape:
            raise ValueError(f"overlay of case {case_id}: mask slice {m.shape} differs from image slice {img.shape}")
    top = max(1, int(max(np.max(m) for m in masks)))
    fig = Figure(figsize=(7.0, 3.6))
    for i, (mask, label) in enumerate(zip(masks, ("truth", "prediction"), strict=True)):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(img.T, cmap="gray", origin="lower")
        shown = np.ma.masked_where(mask.T == 0, mask.T)
        ax.imshow(shown, cmap="autumn", alpha=0.5, vmin=0, vmax=top, origin="lower", interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{case_id}: {label}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_history(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """One small panel per metric over epochs."""
    names = list(history)
    cols = min(3, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = np.asarray(history[name], dtype=np.float64)
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3)
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_risk_coverage(curve: RiskCoverage, title: str, path: Path) -> Path | None:
    """Error rate of the most certain cases against coverage, with the random and best rankings; ``None`` without cases."""
    if not len(curve.risk):
        return None
    fig = Figure(figsize=(4.5, 3.8))
    ax = fig.add_subplot()
    ax.plot(curve.coverage, curve.risk, label=f"predictive entropy (AURC {curve.aurc:.3f})")
    ax.axhline(
        curve.random_aurc, linestyle="--", color="grey", linewidth=0.8, label=f"random (AURC {curve.random_aurc:.3f})"
    )
    ax.set(xlabel="coverage (most certain cases kept)", ylabel="error rate", title=f"{title}: risk-coverage")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="center left", fontsize=8)  # the curve rises along the diagonal; the random line is on top
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(
    curves: Mapping[str, ReliabilityBins],
    path: Path,
    title: str,
    recalibrated: Mapping[str, ReliabilityBins] | None = None,
    xlabel: str = "mean predicted probability",
    ylabel: str = "observed frequency",
) -> Path | None:
    """Reliability diagram: observed frequency against mean confidence per bin (non-empty bins), with
    the cases per bin below; ``recalibrated`` curves (same names) dashed. ``None`` when no bin has a case.
    """
    if not any(b.count.sum() for b in curves.values()):
        return None
    fig = Figure(figsize=(4.5, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    for i, (name, bins) in enumerate(curves.items()):
        color = f"C{i % 10}"
        filled = bins.count > 0
        ece, _ = bins.errors()
        top.plot(
            bins.confidence[filled], bins.frequency[filled], marker="o", color=color, label=f"{name} (ECE {ece:.3f})"
        )
        bottom.stairs(bins.count, bins.edges, color=color)
        after = (recalibrated or {}).get(name)
        if after is not None and after.count.sum():
            kept = after.count > 0
            ece_after, _ = after.errors()
            top.plot(
                after.confidence[kept],
                after.frequency[kept],
                marker="s",
                markersize=4,
                linestyle=":",
                color=color,
                label=f"{name} recalibrated (ECE {ece_after:.3f})",
            )
            bottom.stairs(after.count, after.edges, color=color, linestyle=":")
    top.set(ylabel=ylabel, title=title, xlim=(0, 1), ylim=(-0.02, 1.02))
    top.legend(loc="upper left", fontsize=7)
    bottom.set(xlabel=xlabel, ylabel="cases")
    fig.subplots_adjust(hspace=0.08)
    return _save(fig, path)
