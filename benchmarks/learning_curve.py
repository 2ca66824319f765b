"""Learning curve of the ultrasound bundle on BUSI: primary metric vs share of labels, per training mode.

Why: "how much does each label buy, and do unlabelled images (semi-supervised) or weak labels
(weak->strong) make up for fewer labels?" is answered by curves, not by one run. This script only
chooses the data and CPU-sized settings; the sweep itself is :func:`medmtl.experiments.learning_curve.run_learning_curve`
(every run through ``python -m monai.bundle run``, finished runs reused, failed ones recorded).

Run from the repository root (BUSI under ``../shared/data/busi`` or ``--data``)::

    python benchmarks/learning_curve.py                 # 6 fractions x supervised / semi-supervised, CPU settings
    python benchmarks/learning_curve.py --quick         # 2 fractions x 2 modes x 2 epochs at 64 px: a smoke check
    python benchmarks/learning_curve.py --epochs 60 --size 128 --time-limit 0   # the bundle's own settings (GPU)

The same through the CLI: ``medmtl learning-curve bundles/ultrasound_mtl runs/learning_curve_breast_us
--set epochs=30 --set spatial_size=[96,96] ...``. Results: ``OUT/learning_curve.{csv,json,md,png}``;
a full (non ``--quick``) run also writes ``benchmarks/results/learning_curve_breast_us.json``. The
ultrasound bundle has no weak labels (no ``pretrain.json``), so ``weak_strong`` is listed as skipped.
Killed or rerun, the sweep resumes: delete ``OUT/<mode>/<fraction>`` to redo a point.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from medmtl.experiments.learning_curve import DEFAULT_FRACTIONS, MODES, run_learning_curve

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BUNDLE = REPO / "bundles" / "ultrasound_mtl"
QUICK = {"fractions": (0.1, 1.0), "modes": ("supervised", "semi_supervised"), "epochs": 2, "size": 64}


def _dataset_dir(data: Path) -> Path:
    """BUSI's image root: the folder holding benign/, malignant/, normal/ (``Dataset_BUSI_with_GT`` if nested)."""
    nested = data / "Dataset_BUSI_with_GT"
    return nested if nested.is_dir() else data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "busi", help="BUSI folder")
    parser.add_argument(
        "--out", type=Path, default=None, help="sweep folder (default: runs/learning_curve_breast_us[_quick])"
    )
    parser.add_argument("--quick", action="store_true", help="2 fractions x 2 modes x 2 epochs at 64 px")
    parser.add_argument("--fractions", type=float, nargs="+", default=None, help="default: 0.01 0.05 0.1 0.25 0.5 1")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None, help="default: all (weak_strong is skipped)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (CPU default 30; the bundle's is 60)")
    parser.add_argument("--size", type=int, default=96, help="pixels per side (CPU default 96; the bundle's is 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=20.0, help="minutes per training run, 0: none")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking", default=None, help="e.g. mlflow: log every run to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if not args.data.is_dir():
        print(
            f"BUSI not found at {args.data}: pass --data (see data_specs/breast_ultrasound.yaml for the layout)",
            file=sys.stderr,
        )
        return 1
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every bundle process
    epochs, size = (QUICK["epochs"], QUICK["size"]) if args.quick else (args.epochs, args.size)
    fractions = args.fractions or (QUICK["fractions"] if args.quick else DEFAULT_FRACTIONS)
    modes = args.modes or (QUICK["modes"] if args.quick else MODES)
    overrides = {
        "dataset_dir": str(_dataset_dir(args.data).resolve()),
        "epochs": epochs,
        "spatial_size": [size, size],
        "batch_size": args.batch_size,
        "val_interval": 1 if args.quick else 2,
        "early_stop_patience": 5,
        "time_limit_minutes": None if args.quick or not args.time_limit else args.time_limit,
    }
    out = args.out or REPO / "runs" / ("learning_curve_breast_us_quick" if args.quick else "learning_curve_breast_us")
    result = run_learning_curve(
        BUNDLE, out, fractions, modes, overrides, seed=args.seed, tracking=args.tracking, cwd=REPO
    )
    print(result.to_markdown(), end="")
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    if not args.quick:
        record = {
            "benchmark": "learning_curve",
            "bundle": "ultrasound_mtl",
            "data": "BUSI",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
            "settings": {"fractions": list(fractions), "modes": list(modes), "seed": args.seed, **overrides},
            "skipped": result.skipped,
            "failed": [{"mode": r.mode, "fraction": r.fraction, "stage": r.stage} for r in result.failed],
            "rows": result.rows(),
        }
        RESULTS.mkdir(exist_ok=True)
        tmp = RESULTS / "learning_curve_breast_us.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, RESULTS / "learning_curve_breast_us.json")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
