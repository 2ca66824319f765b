"""``medmtl`` command line: thin argument parsing over library functions.

Each subcommand only parses arguments and calls one function (nnU-Net's ``*_entrypoints`` over
``*_api`` split), so everything the CLI does is also a Python call and testable without a shell.
Exit codes: 0 success, 1 the data/input has problems (all printed) or a command failed (one
``error: ...`` line naming the file, never a traceback: ``--debug`` or ``MEDMTL_DEBUG=1`` shows it),
2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medmtl.bundle_layers import WORKFLOWS, bundle_command, export_bundle
from medmtl.data.problems import DataError
from medmtl.data.splits import NEW_CASES_OPTIONS
from medmtl.experiments.learning_curve import MODES as LEARNING_CURVE_MODES

__all__ = ["main", "build_parser", "run_here"]


def _cmd_validate(args: argparse.Namespace) -> int:
    from medmtl.data.validate import validate_dataset

    report = validate_dataset(
        args.spec,
        root=args.root,
        workers=args.workers,
        check_files=not args.no_files,
        duplicates=not args.no_duplicates,
    )
    written = None
    if report.duplicates is not None and report.duplicates.pairs:
        written = report.duplicates.write_csv(args.duplicates_csv)
    if args.json:
        print(json.dumps({**report.to_dict(), "duplicates_csv": str(written) if written else None}, indent=2))
    else:
        print(report.format())
        if written is not None:
            print(f"wrote {len(report.duplicates.pairs)} duplicate pairs (both files, labels, splits) to {written}")
    return 0 if report.ok else 1


def _cmd_splits(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medmtl.data.spec import load_spec
    from medmtl.data.splits import record_splits

    existed = Path(args.out).exists()
    table = load_spec(args.spec).build_cases(root=args.root, splits_file=args.out, new_cases=args.new_cases)
    table.raise_for_errors()  # new / vanished cases are logged as warnings while building
    added = record_splits(table.cases, args.out)
    counts = table.split_counts()
    action = f"added {added} case(s) to" if existed and added else "kept" if existed else "wrote"
    print(
        json.dumps(counts)
        if args.json
        else f"{action} {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    return 0


def _cmd_convert_dicom(args: argparse.Namespace) -> int:
    from medmtl.data.dicom import convert_dicom

    written = convert_dicom(args.input, args.output)
    for path in written if isinstance(written, list | tuple) else [written]:
        print(f"wrote {path}")
    return 0


def _cmd_reformat_planes(args: argparse.Namespace) -> int:
    from medmtl.data.planes import reformat_planes

    written = reformat_planes(
        args.source,
        args.out,
        case_id=args.case_id,
        split=args.split,
        size=args.size,
        slice_spacing_mm=args.slice_mm,
        max_slices=args.max_slices,
        overwrite=args.overwrite,
    )
    for path in written.values():
        print(f"wrote {path}")
    return 0


def _case_id(text: str) -> str:
    if not re.fullmatch(r"\d{4}", text):
        raise argparse.ArgumentTypeError(f"must be 4 digits like MRNet's ids (e.g. 0001), got {text!r}")
    return text


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def _positive_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of mm, got {text!r}")
    return value


_REFORMAT_EPILOG = """\
Writes OUT/<split>/{axial,coronal,sagittal}/<case id>.npy: uint8 (slices, size, size) stacks in
MRNet's layout and plane convention, read by data_specs/mrnet.yaml (--root OUT). Nothing from the
source's header is written; the case is named by --case-id only.

The spec also reads three header-less label tables in OUT, which must exist: <split>-abnormal.csv,
<split>-acl.csv, <split>-meniscus.csv (an MRNet copy has them; otherwise create them). Empty tables
are fine: the case is then in the spec's "unlabelled" split, so select that split for inference.
To give the case labels (for evaluation; it then joins the test split for --split valid), add one
row "<case id>,<0 or 1>" to each table, e.g. "0001,1".
"""


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from medmtl.data.demo import generate_demo_data

    summary = generate_demo_data(args.out, num_cases=args.cases, seed=args.seed)
    print(
        json.dumps(summary, indent=2, default=str) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items())
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medmtl.metrics import report_from_dir

    source = Path(args.run_dir)
    if not source.is_dir():  # an MLflow run id: fetch its evaluation artifacts first
        from medmtl.tracking import download_evaluation

        source = download_evaluation(args.run_dir, args.out or f"report_{args.run_dir}", args.tracking_uri)
    path = report_from_dir(source, out_dir=args.out)
    print(f"wrote {path}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from medmtl.experiments.summary import run_summary_text

    print(run_summary_text(args.run_dir))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from medmtl.metrics.compare import compare_runs, default_out_dir, write_comparison

    out = Path(args.out) if args.out else default_out_dir(args.run_a, args.run_b)
    comparison = compare_runs(
        args.run_a, args.run_b, n_resamples=args.n_resamples, alpha=args.alpha, seed=args.seed, level=args.level
    )
    json_path, csv_path = write_comparison(comparison, out, overwrite=args.overwrite)
    print(comparison.format_table())
    print(f"wrote {json_path} and {csv_path}")
    return 0


#: exit status of ``medmtl predict`` when some inputs were not predicted (listed in failed.csv) or some DICOM
#: SEG / SR outputs were not written (dicom_failed.csv).
PREDICT_SOME_FAILED = 3


def _device(text: str) -> str:
    if re.fullmatch(r"cpu|cuda(:\d+)?", text) is None:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _cmd_predict(args: argparse.Namespace) -> int:
    from medmtl.deploy.predict import predict

    result = predict(
        args.input,
        args.output,
        args.model,
        device=args.device,
        overwrite=args.overwrite,
        data_spec=args.data_spec,
        overrides=args.overrides,
        runner=run_here,  # this process ends after the inference: run it here, not in a new Python
    )
    print(f"predicted {len(result.predicted)} input(s) into {result.output_dir} (predictions.csv)")
    if result.failed:
        print(f"{len(result.failed)} input(s) not predicted: see {result.output_dir / 'failed.csv'}", file=sys.stderr)
    if result.dicom_failed:
        where = result.output_dir / "dicom_failed.csv"
        print(f"{len(result.dicom_failed)} DICOM SEG/SR output(s) not written: see {where}", file=sys.stderr)
    return PREDICT_SOME_FAILED if result.failed or result.dicom_failed else 0


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a significance level in (0, 1), e.g. 0.05, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a label fraction in (0, 1], e.g. 0.1 for 10 %, got {text!r}")
    return value


def _override(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON when it parses (``20``, ``[64,64]``, ``true``), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. epochs=20), got {text!r}")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    import shlex

    from medmtl.experiments.learning_curve import DEFAULT_FRACTIONS, MODES, run_learning_curve

    try:
        result = run_learning_curve(
            args.bundle,
            args.out,
            fractions=args.fractions or DEFAULT_FRACTIONS,
            modes=args.modes or MODES,
            overrides=dict(args.overrides),
            seed=args.seed,
            tracking=args.tracking,
            dry_run=args.dry_run,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in result.runs:
            print(f"# {run.mode} at {run.fraction:g} ({run.labelled_cases} labelled cases)")
            print("\n".join(shlex.join(cmd) for cmd in run.commands))
        for mode, reason in result.skipped.items():
            print(f"# {mode}: skipped, {reason}")
        return 0
    print(result.to_markdown(), end="")
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 1 if result.failed else 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from medmtl.planning.plan import make_plan

    result = make_plan(
        args.spec,
        args.root,
        out=args.out,
        bundle=args.bundle,
        device=args.device,
        time_budget=args.time_budget,
        memory=args.memory,
        spec_overrides=args.spec_overrides,
        pretrained_weights=args.pretrained_weights,
        **({"amp": args.amp} if args.amp else {}),  # the default is make_plan's (no torch import here)
        workers=args.workers,
        progress=not args.no_progress,
    )
    shown = ("spatial_size", "pixdim", "backbone", "batch_size", "epochs", "intensity", "weighting")
    for choice in result.choices:
        if choice.key in shown:
            print(f"{choice.key}: {json.dumps(choice.value)}")
    print(f"wrote {result.plan_path} and {result.fingerprint_path} in {result.seconds:.1f} s")
    print(f"train with: medmtl run {result.meta['bundle']} train --plan {result.plan_path} --output_dir RUN_DIR")
    return 0


def _spec_overrides(text: str) -> dict:
    """``--spec-overrides`` as MONAI's bundles take it: a mapping in YAML/Python literal syntax."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            "must be a mapping of spec keys, e.g. \"{'splits': {'method': 'fractions', 'fractions': "
            f"{{'train': 0.8, 'test': 0.2}}}}}}\", got {text!r}"
        )
    return value


def _pop_option(argv: list[str], name: str, default: str | None) -> str | None:
    """Remove ``name VALUE`` / ``name=VALUE`` from ``argv`` (in place); the last value given, else ``default``."""
    value, index = default, 0
    while index < len(argv):
        token = argv[index]
        if token == name and index + 1 < len(argv):
            value = argv[index + 1]
            del argv[index : index + 2]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
            del argv[index]
        else:
            index += 1
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    workflows = [w for w in args.workflow.split("+") if w]
    overrides = list(args.overrides)
    args.plan = _pop_option(overrides, "--plan", args.plan)  # also after WORKFLOW, where argparse leaves it
    if args.plan is not None:
        from medmtl.planning.plan_file import read_plan

        read_plan(args.plan)  # a clear error now rather than MONAI's on a file that is not a plan
        overrides = ["--args_file", str(args.plan), *overrides]
    run_dir = _pop_option(list(overrides), "--output_dir", None)
    if run_dir is not None and set(workflows) <= {"evaluate", "inference"}:
        from medmtl.experiments.cross_validation import ensemble_overrides, is_cv_run
        from medmtl.experiments.experts import is_experts_run, router_overrides

        if is_cv_run(run_dir):  # a cross-validation evaluates / infers as its fold ensemble
            _pop_option(overrides, "--output_dir", None)
            overrides = [*overrides, *ensemble_overrides(run_dir, workflows, overrides)]
        elif is_experts_run(run_dir):  # medmtl experts: evaluates / infers as its ExpertRouter (router.pt)
            overrides = [*overrides, *router_overrides(run_dir, overrides)]
    import monai.bundle

    from medmtl.engines.start_checks import cli_overrides, none_override_problems, unknown_override_problems

    cmd = bundle_command(args.bundle, workflows, overrides)
    monai_argv = [str(Path(monai.bundle.__file__).with_name("__main__.py")), *cmd[3:]]
    problems = none_override_problems(overrides)  # MONAI would drop them without a word
    problems += unknown_override_problems(cli_overrides(monai_argv) or {})  # MONAI would stop with a KeyError
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if args.print_only:  # double quotes around MONAI's list syntax, as the docs write it
        print(" ".join(f'"{t}"' if "'" in t and '"' not in t else shlex.quote(t) for t in cmd))
        return 0
    sys.stdout.flush()
    if getattr(args, "bundle_in_process", False):  # medmtl predict: no second start of Python, torch and MONAI
        from medmtl.bundle_in_process import run_bundle_in_process

        return run_bundle_in_process(cmd[3:])
    if os.name == "posix":  # MONAI's own process: its signals, exit status and command line (read by the start checks)
        os.execv(cmd[0], cmd)
    return subprocess.call(cmd)


def _cmd_cv(args: argparse.Namespace) -> int:
    from medmtl.engines.start_checks import none_override_problems
    from medmtl.experiments.cross_validation import run_cv
    from medmtl.experiments.cv_report import write_cv_report

    overrides = list(args.overrides)
    plan = _pop_option(overrides, "--plan", args.plan)
    if problems := none_override_problems(overrides):
        print("\n".join(problems), file=sys.stderr)
        return 2
    result = run_cv(args.bundle, args.folds, args.output_dir, overrides, plan=plan, test=not args.no_test)
    report = write_cv_report(
        result.output_dir, result.fold_eval_dirs, result.fold_test_dirs, result.ensemble_dir, choices=result.choices
    )
    for name, entry in report.summary["pooled"].items():
        print(
            f"{name} {entry['metric']} (pooled out-of-fold, {entry['cases']} cases): {entry['value']:.4f} "
            f"[{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"
        )
    test = report.summary.get("test")
    if test and test["ensemble"]:
        for name, entry in test["ensemble"].items():
            print(
                f"{name} {entry['metric']} on the test split: fold ensemble {entry['value']:.4f}, mean single fold "
                f"{test['mean_single_fold'][name]:.4f}"
            )
    print(f"wrote {report.report_dir / 'cv.html'} and {report.report_dir / 'report.html'}")
    return 0


def _cmd_experts(args: argparse.Namespace) -> int:
    from medmtl.engines.start_checks import none_override_problems
    from medmtl.experiments.experts import run_experts

    overrides = list(args.overrides)
    if problems := none_override_problems(overrides):
        print("\n".join(problems), file=sys.stderr)
        return 2
    result = run_experts(
        args.bundle, args.single_run, args.output_dir, args.router_task, overrides, weights=args.weights
    )
    for name, folder in result.expert_dirs.items():
        print(f"{result.router_task} = {name}: {folder}{' (trained before)' if name in result.skipped else ''}")
    print(f"wrote {result.router_checkpoint}")
    print(f"evaluate with: medmtl run {args.bundle} evaluate --output_dir {result.output_dir}")
    return 0


def _cmd_export_bundle(args: argparse.Namespace) -> int:
    if args.run is None:
        out = export_bundle(args.bundle, args.out, data_spec=args.data_spec)
        print(f"wrote {out} (run it with: python -m monai.bundle run --config_file {out}/configs/train.json)")
        return 0
    from medmtl.deploy.zoo_bundle import export_run_bundle

    out = export_run_bundle(args.bundle, args.out, args.run, data_spec=args.data_spec)
    print(f"wrote {out} with the weights of {args.run} as models/model.pt (check it: medmtl verify-bundle {out})")
    return 0


def _cmd_verify_bundle(args: argparse.Namespace) -> int:
    from medmtl.deploy.verify_bundle import verify_bundle

    # MONAI's checks log every argument they were given
    for name in ("monai.bundle.scripts", "monai.apps", "monai.apps.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    report = verify_bundle(args.path, schema=args.schema, device=args.device)
    print(report.table())
    return 0 if report.ok else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from medmtl.deploy import export_run

    for name in ("onnxscript", "onnx_ir"):  # their INFO lines list every graph rewrite
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    report = export_run(args.run_dir, args.format, args.out, overwrite=args.overwrite)
    sizes = " and ".join("x".join(str(s) for s in size) for size in report.checked_sizes)
    worst = max(report.max_abs_difference.values(), default=0.0)
    print(
        f"wrote {report.path} ({report.export_format}; outputs {', '.join(report.metadata['outputs'])}; "
        f"max |difference| to PyTorch {worst:.2g} at {sizes})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medmtl", description="Multi-task learning on medical images (MONAI).")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the Python traceback too (also: MEDMTL_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check every case of a dataset spec and print all problems at once")
    p.add_argument("spec", help="data spec YAML (data_specs/*.yaml)")
    p.add_argument("--root", help="data root (overrides the spec's root)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes for per-case checks, the main one included (0: all cores, 1: in-process)",
    )
    p.add_argument("--no-files", action="store_true", help="only check the spec and the case table, do not open images")
    p.add_argument("--no-duplicates", action="store_true", help="do not look for duplicate images")
    p.add_argument(
        "--duplicates-csv",
        default="duplicates.csv",
        metavar="PATH",
        help="where the duplicate pairs are written, when there are any (default: duplicates.csv here)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "make-splits",
        help="write splits.json (train/val/test case ids) once; an existing file keeps every recorded split",
    )
    p.add_argument("spec")
    p.add_argument("--root")
    p.add_argument("--out", default="splits.json", help="splits file; if it exists, only cases it lacks are added")
    p.add_argument(
        "--new-cases",
        default="exclude",
        choices=NEW_CASES_OPTIONS,
        help="where labelled cases missing from an existing --out go: exclude (default: not recorded, "
        "left out of train/val/test), train, val, test, or assign (the spec's hash rule)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_splits)

    p = sub.add_parser("convert-dicom", help="DICOM series/file to NIfTI with geometry, de-identified")
    p.add_argument("input", help="DICOM file or folder of one series")
    p.add_argument("output", help="output .nii.gz file, or a folder (one file per series)")
    p.set_defaults(func=_cmd_convert_dicom)

    p = sub.add_parser(
        "reformat-planes",
        help="one 3D knee series (NIfTI or DICOM folder) to MRNet's axial/coronal/sagittal .npy stacks",
        description="Reformat one 3D knee MRI series into MRNet's three plane stacks, to run the MRNet-trained model on it.",
        epilog=_REFORMAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="NIfTI file or folder of one DICOM series")
    p.add_argument("out", help="MRNet-like root folder to write into (created if absent)")
    p.add_argument("--case-id", required=True, type=_case_id, help="4-digit case id, e.g. 0001")
    p.add_argument("--split", default="valid", choices=["valid", "train"], help="split folder (default: valid)")
    p.add_argument("--size", type=_int_at_least(8), default=256, help="pixels per side (default: 256, as MRNet)")
    p.add_argument(
        "--slice-mm",
        type=_positive_mm,
        default=None,
        help="slice spacing of every stack in mm (default: 3 mm, kept within 20-60 slices per stack)",
    )
    p.add_argument("--max-slices", type=_int_at_least(1), default=None, help="upper bound on slices per stack")
    p.add_argument("--overwrite", action="store_true", help="replace the case's files if they exist")
    p.set_defaults(func=_cmd_reformat_planes)

    p = sub.add_parser("demo-data", help="generate the small deterministic demo dataset (2D and 3D)")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=int, default=None, help="cases per dataset (default: the generator's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_demo_data)
    p = sub.add_parser(
        "report", help="(re)build the HTML evaluation report of a run folder (summary.json + predictions.npz)"
    )
    p.add_argument("run_dir", help="folder written by an evaluation (holds summary.json and predictions.npz)")
    p.add_argument("--out", default=None, help="output folder (default: run_dir, or report_<run id>)")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow store of the run (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "learning-curve",
        help="train at 1-100 %% of the labels (supervised, semi-supervised, weak->strong); table + plot",
        description="Train and evaluate a bundle at each label fraction in each mode, each run through "
        "python -m monai.bundle run; write OUT/learning_curve.{csv,json,md,png}. Finished runs are reused, "
        "failed ones are recorded and the sweep goes on (exit code 1 when any failed).",
    )
    p.add_argument("bundle", help="bundle name (ultrasound_mtl) or folder (bundles/ultrasound_mtl)")
    p.add_argument("out", help="sweep folder: runs in OUT/<mode>/<fraction>, results in OUT/learning_curve.*")
    p.add_argument(
        "--fractions",
        nargs="+",
        type=_fraction,
        default=None,
        help="label fractions (default: 0.01 0.05 0.1 0.25 0.5 1)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=LEARNING_CURVE_MODES,
        default=None,
        help="training modes (default: all three; a mode without its bundle config is skipped)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="bundle override for every run, repeatable: --set epochs=20 --set spatial_size=[64,64]",
    )
    p.add_argument("--seed", type=int, default=0, help="bundle seed (weights, augmentation, label subsets)")
    p.add_argument("--tracking", default=None, help="passed to every run as --tracking (e.g. mlflow)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=_cmd_learning_curve)

    p = sub.add_parser(
        "run",
        help="run a bundle workflow: python -m monai.bundle run with the bundle's config layers",
        description="Run WORKFLOW of BUNDLE through python -m monai.bundle run, with the shared and the bundle's "
        "config layers in order. Everything after WORKFLOW is passed to MONAI as it is (--epochs 3 ...). "
        "Evaluation and inference need only --output_dir of the training run.",
        epilog="examples:\n  medmtl run demo train --epochs 3 --output_dir runs/demo\n"
        "  medmtl run demo evaluate --output_dir runs/demo\n"
        "  medmtl run demo inference --output_dir runs/demo --infer_split all\n"
        "  medmtl run --print ultrasound_mtl semi_supervised+multi_gpu_train   (the command, for torchrun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--print", dest="print_only", action="store_true", help="print the command, run nothing")
    p.add_argument(
        "--plan",
        default=None,
        help="plan.yaml from `medmtl plan`: its settings as overrides (MONAI's --args_file); "
        "overrides given after WORKFLOW win",
    )
    p.add_argument("bundle", help="bundle name (demo, ultrasound_mtl, ...) or bundle folder")
    p.add_argument(
        "workflow", help=f"one of {', '.join(WORKFLOWS)}; join several with + (semi_supervised+multi_gpu_train)"
    )
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs for MONAI")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "cv",
        help="K-fold cross-validation of a bundle inside the training split: per-fold and pooled out-of-fold metrics",
        description="Train the K folds of the development cases (train + val of the spec's split; the test split is "
        "never touched) one after another into OUTPUT_DIR/fold_<k>, evaluate each on its held-out fold (final "
        "weights), then pool the out-of-fold predictions: OUTPUT_DIR/cv_report (cv.html, report.html, "
        "cv_summary.json with bootstrap CIs), decisions.json (thresholds) and calibration.json (temperatures) "
        "chosen on them. Run it again to resume; other settings are refused. With --tracking mlflow the folds' "
        "runs are nested under one parent run.",
        epilog="examples:\n  medmtl cv --bundle ultrasound_mtl --folds 5 --output_dir runs/busi_cv --plan plan.yaml\n"
        "  medmtl cv --bundle demo --folds 3 --output_dir runs/demo_cv --epochs 2 --tracking mlflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle name (demo, ultrasound_mtl, ...) or bundle folder")
    p.add_argument("--folds", type=_int_at_least(2), default=5, help="number of folds (default 5)")
    p.add_argument("--output_dir", required=True, help="folder of the cross-validation (fold_<k> inside)")
    p.add_argument("--plan", default=None, help="plan.yaml from `medmtl plan` that every fold trains with")
    p.add_argument(
        "--no-test",
        action="store_true",
        help="skip the test-split evaluation of each fold and of the fold ensemble (a spec without a test split)",
    )
    # every other --key value is a bundle override for every fold (collected by main)
    p.set_defaults(func=_cmd_cv, overrides=[], takes_overrides=True)

    p = sub.add_parser(
        "experts",
        help="train one expert per class of a router task (e.g. per body part) from a trained multi-task model",
        description="Fine-tune one expert per class of ROUTER_TASK from the model in --from: expert k is an ordinary "
        "bundle training (OUTPUT_DIR/expert_<k>_<class>) on the training cases of class k only (spec key select), "
        "with the model's data, split and architecture. OUTPUT_DIR/router.pt then holds the model (the router: its "
        "ROUTER_TASK prediction picks the expert per image) and the experts; `medmtl run BUNDLE evaluate "
        "--output_dir OUTPUT_DIR` evaluates them as one ExpertRouter on the model's test split, and `medmtl compare "
        "--level study` compares it with the model. Run it again to resume; other settings are refused.",
        epilog="example:\n  medmtl experts --bundle radiograph_mtl --from runs/mura --output_dir runs/mura_experts "
        "--epochs 10 --learning_rate 0.0001",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle name or folder the model in --from was trained with")
    p.add_argument("--from", dest="single_run", required=True, help="output_dir of the trained multi-task model")
    p.add_argument("--output_dir", required=True, help="folder of the experts (expert_<k>_<class>, router.pt inside)")
    p.add_argument(
        "--router_task", default=None, help="task whose predicted class picks the expert (default: the multiclass task)"
    )
    p.add_argument(
        "--weights", default="best", choices=["best", "last"], help="checkpoint of the model and of each expert used"
    )
    # every other --key value is a bundle override for every expert's training (collected by main)
    p.set_defaults(func=_cmd_experts, overrides=[], takes_overrides=True)

    p = sub.add_parser(
        "plan",
        help="fingerprint a dataset and write plan.yaml: every training setting, batch fitted to memory, epochs to time",
        description="Validate the dataset, read every case once (fingerprint.json, cached by file content), choose "
        "normalisation, network, losses, task weights and augmentation from it, and fit input size, batch size and "
        "epochs by timing real training steps of the bundle's network on the device. Each value in plan.yaml has "
        "its reason beside it.",
        epilog="example:\n  medmtl plan data_specs/breast_ultrasound.yaml --root /data/Dataset_BUSI_with_GT "
        "--time-budget 10m -o runs/busi_plan/plan.yaml\n"
        "  medmtl run ultrasound_mtl train --plan runs/busi_plan/plan.yaml --output_dir runs/busi",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="data spec YAML")
    p.add_argument("--root", default=None, help="data root (default: the spec's)")
    p.add_argument("-o", "--out", default="plan.yaml", help="plan file (fingerprint.json is written beside it)")
    p.add_argument("--bundle", default=None, help="bundle to fit (default: by modality and dimensions)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="device of the trial steps and training")
    p.add_argument("--time-budget", default="10m", help="training time: 10m, 90s, 1.5h (default: 10m)")
    p.add_argument(
        "--memory", default=None, help="memory budget, e.g. 8GiB (default: 90%% of the GPU / half the free RAM)"
    )
    p.add_argument(
        "--spec-overrides", type=_spec_overrides, default=None, help="spec keys replaced, e.g. another splits"
    )
    p.add_argument("--pretrained-weights", default=None, help="encoder weights file (torchvision, timm, MONAI)")
    p.add_argument(
        "--amp",
        default=None,
        help="mixed precision of the runs: auto (CPU: bfloat16 autocast when a timed step is >= 1.1x faster; "
        "CUDA: the bundle's AMP), on or off; the epochs are fitted to it (default: medmtl.planning.plan.DEFAULT_AMP)",
    )
    p.add_argument("--workers", type=int, default=0, help="processes reading cases (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "export-bundle",
        help="write a self-contained copy of a bundle (no shared layers), as the MONAI model zoo expects",
    )
    p.add_argument("bundle", help="bundle name or folder")
    p.add_argument("out", help="new folder for the copy")
    p.add_argument("--data-spec", default=None, help="data spec to ship (default: the one the bundle or run names)")
    p.add_argument(
        "--run",
        default=None,
        help="a trained run folder: its weights become models/model.pt and its settings are written into the configs",
    )
    p.set_defaults(func=_cmd_export_bundle)

    p = sub.add_parser(
        "verify-bundle",
        help="run the MONAI model zoo's CI checks on a bundle folder, offline (exit 1 on a failure)",
        epilog="example:\n  medmtl export-bundle demo runs/zoo/demo --run runs/demo\n  medmtl verify-bundle runs/zoo/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="the bundle folder")
    p.add_argument("--schema", default=None, help="metadata schema file (default: eval/schema.json, ../shared/monai)")
    p.add_argument("--device", default="cpu", help="device for the network checks (default: cpu)")
    p.set_defaults(func=_cmd_verify_bundle)

    p = sub.add_parser(
        "export",
        help="export a trained run's network to ONNX, torch.export or TorchScript (checked against PyTorch)",
        description="Rebuild the network of a trained run (or a cross-validation's fold ensemble) from its record, "
        "export it with one named output per task and its description inside the file (tasks, input, the run's "
        "settings, thresholds, temperatures), and check the file's outputs against PyTorch before writing it.",
        epilog="examples:\n  medmtl export runs/demo --format onnx -o demo.onnx\n"
        "  medmtl export runs/demo --format torch-export -o demo.pt2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="the --output_dir of a trained run, or of medmtl cv")
    p.add_argument("--format", required=True, choices=["onnx", "torch-export", "torchscript"], help="file format")
    p.add_argument("-o", "--out", required=True, help="the file to write (model.onnx, model.pt2, model.ts)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("summary", help="print what a run produced: test metrics, output files, MLflow location")
    p.add_argument("run_dir", help="the bundle's output_dir (e.g. runs/demo)")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser(
        "compare",
        help="compare two evaluated runs case by case: B - A per task with paired bootstrap CIs and tests",
        description="Compare run B with run A on the same labelled test cases: per task the primary metric of "
        "each, B - A with a paired bootstrap CI, and DeLong's test (AUROC), Wilcoxon signed-rank (per-case Dice) "
        "or McNemar + paired bootstrap (multiclass). Prints the table, writes compare.json and compare.csv. Runs "
        "evaluated on different test cases are refused, naming the cases.",
        epilog="example:\n  medmtl compare runs/busi/seed0 runs/busi/seed1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_a", help="run A (the reference): a run folder holding eval/, or an evaluation folder")
    p.add_argument("run_b", help="run B: differences are B - A")
    p.add_argument("-o", "--out", default=None, metavar="OUT_DIR", help="output folder (default: ./compare_<A>_vs_<B>)")
    p.add_argument("--n-resamples", type=_int_at_least(1), default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--alpha", type=_alpha, default=0.05, help="significance level; CIs cover 1 - alpha (default: 0.05)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a compare.json already in the output folder")
    p.add_argument(
        "--level",
        default="case",
        choices=["case", "study"],
        help="case (default), or study: per study (exam) for evaluations whose spec has aggregate_by; writes "
        "compare_studies.json and compare_studies.csv",
    )
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "predict",
        help="predict new images (a file or a folder) with a trained run or cross-validation: no spec, no labels",
        description="Predict every image of INPUT (a file, or a folder searched recursively: PNG/JPEG/TIFF/BMP, "
        "NIfTI, .npy, raw .img/.raw (JSRT), DICOM files) with MODEL (a training run folder, a medmtl cv folder: its "
        "fold ensemble, an MLflow model, or a file written by medmtl export: it carries the run record and spec). "
        "The run's own preprocessing, network, decisions, temperatures and postprocessing are used. Writes masks "
        "in each input's geometry, predictions.csv, inputs.json, and failed.csv for inputs that cannot be read "
        f"(exit status {PREDICT_SOME_FAILED} when some failed). DICOM files are grouped into studies and series, "
        "the series chosen by the spec's dicom_series rules (series.csv), and each DICOM case also gets a DICOM "
        "SEG per mask and a DICOM SR of its findings (those that cannot be written: dicom_failed.csv, exit status "
        f"{PREDICT_SOME_FAILED}). Further bundle overrides may follow, e.g. "
        '--tta_axes "[0]".',
        epilog="examples:\n  medmtl predict -i new_scans/ -o predictions/ -m runs/busi_cv\n"
        "  medmtl predict -i new_scans/ -o predictions/ -m model.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="a training run folder, a medmtl cv folder, an MLflow model (models:/NAME@ALIAS, runs:/ID/model), or a "
        "file written by medmtl export (model.onnx, model.pt2, TorchScript)",
    )
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda or cuda:N (default: a GPU if there is one)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prediction in the output folder")
    p.add_argument(
        "--data-spec", default=None, help="the spec the model was trained with, if its recorded path is not here"
    )
    p.set_defaults(func=_cmd_predict, takes_overrides=True, overrides=[])
    return parser


def main(argv: Sequence[str] | None = None, *, bundle_in_process: bool = False) -> int:
    """Run ``medmtl ARGV``; its exit status. ``bundle_in_process``: ``medmtl run`` runs MONAI's bundle in this
    process (:mod:`medmtl.bundle_in_process`) instead of replacing it with ``python -m monai.bundle``."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    args.bundle_in_process = bundle_in_process
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    debug = args.debug or os.environ.get("MEDMTL_DEBUG", "") not in ("", "0")
    try:
        return func(args)
    except DataError as err:  # every problem, one per line, no traceback
        if debug:
            raise
        print(str(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's promise: a named error and exit 1, never a traceback
        if debug:
            raise
        print(_error_line(err), file=sys.stderr)
        return 1


def run_here(argv: Sequence[str]) -> int:
    """``medmtl ARGV`` in this process, a bundle workflow included: the runner of ``medmtl predict``, whose
    process ends with the inference (a library caller of :func:`medmtl.deploy.predict.predict` keeps the
    subprocess, since a workflow changes process-wide settings)."""
    return main(argv, bundle_in_process=True)


_PLAIN_ERRORS = (OSError, ValueError, KeyError)
"""Errors whose message already names the file and the problem: printed as they are."""


def _error_line(err: BaseException) -> str:
    """``error: <message>`` for medmtl's and the OS's errors; the error's type too for anything unexpected."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"  # e.g. "labels.csv: Is a directory"
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.strip() or type(err).__name__
    if isinstance(err, _PLAIN_ERRORS) or type(err).__module__.startswith("medmtl"):
        return f"error: {text}"
    return f"error ({type(err).__name__}): {text} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
