"""``medmtl cv``: K-fold cross-validation of a bundle inside the training split, one fold after another.

Why: a single split of a few hundred images moves the figures by several points between seeds;
the folds give every development case an out-of-fold prediction (nnU-Net's ``validation`` of each
fold), from which the CV metrics, the decision thresholds and the temperatures are chosen without
touching the test split. Each fold is an ordinary bundle run in ``RUN/fold_<k>`` (its own
``run_config.json``, ``splits.json``, checkpoints, resume) with ``splits.cv_folds`` / ``cv_fold``
set (:mod:`medmtl.data.splits`); its out-of-fold evaluation goes to ``RUN/fold_<k>/oof``.

``RUN/cv.json`` records what the folds were trained with; running ``medmtl cv`` again on the same
folder resumes (finished folds are skipped, an interrupted one resumes from its ``last.pt``) and
refuses other settings, naming the difference. With ``--tracking mlflow`` the folds' training and
evaluation runs are nested under one parent run (tag ``mlflow.parentRunId``).

Out-of-fold predictions and every fold score the final weights (``last.pt``, as nnU-Net): a fold's
``best.pt`` is chosen on its own validation fold, which would make its out-of-fold figures optimistic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from medmtl.atomic_io import atomic_write, atomic_write_with
from medmtl.bundle_layers import bundle_dir, merged_config
from medmtl.engines.checkpoint_io import RUN_CONFIG_KEY
from medmtl.experiments.commands import check_resume_record, option_value, run_medmtl, without_options
from medmtl.json_file import read_json
from medmtl.networks.ensemble import ensemble_state_dict

if TYPE_CHECKING:  # cv_report imports nothing from here; the import stays lazy for start-up
    from medmtl.experiments.cv_report import OutOfFoldChoices

__all__ = [
    "CV_FILE",
    "CVError",
    "CVResult",
    "ensemble_checkpoint",
    "ensemble_overrides",
    "fold_dir",
    "is_cv_run",
    "run_cv",
    "write_ensemble_checkpoint",
]

logger = logging.getLogger(__name__)

CV_FILE = "cv.json"
CV_VERSION = 1
OOF_DIR = "oof"
"""Folder of a fold's out-of-fold evaluation (inside ``fold_<k>``)."""
TEST_DIR = "test"
"""Folder of a fold's evaluation on the test split (inside ``fold_<k>``)."""
ENSEMBLE_DIR = "ensemble_test"
"""Folder of the fold ensemble's evaluation on the test split (inside the cross-validation's folder)."""
ENSEMBLE_CHECKPOINT = "ensemble.pt"
_RECORDED = ("bundle", "folds", "overrides", "plan_sha256", "spec_overrides")
"""What a resumed ``medmtl cv`` must repeat exactly."""


class CVError(ValueError):
    """A cross-validation cannot start or resume: the message names the folder, the problem and the fix."""


@dataclass
class CVResult:
    """What :func:`run_cv` did: the run folder, the folds' out-of-fold evaluation folders, the parent run."""

    output_dir: Path
    fold_eval_dirs: list[Path]
    parent_run_id: str | None = None
    skipped: list[int] = field(default_factory=list)
    fold_test_dirs: list[Path] = field(default_factory=list)
    ensemble_dir: Path | None = None
    choices: OutOfFoldChoices | None = None
    """The :class:`~medmtl.experiments.cv_report.OutOfFoldChoices` fitted before the test evaluations (``None`` without them)."""


def fold_dir(output_dir: str | os.PathLike, fold: int) -> Path:
    """``RUN/fold_<k>``: the bundle run of one fold."""
    return Path(output_dir) / f"fold_{fold}"


def _literal(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CVError(f"{what} is not a YAML/Python literal ({err}): {text!r}") from None


@dataclass
class _Settings:
    """A bundle setting as the folds get it: the command line's, else the plan's, else the bundle's config."""

    overrides: Sequence[str]
    plan: Mapping[str, Any]
    bundle: Mapping[str, Any]

    @classmethod
    def read(cls, bundle: str | os.PathLike, overrides: Sequence[str], plan: Path | None) -> _Settings:
        from medmtl.planning.plan_file import read_plan

        return cls(overrides, dict(read_plan(plan)) if plan else {}, merged_config(bundle, "train"))

    def get(self, key: str) -> Any:
        given = option_value(self.overrides, f"--{key}")
        if given is not None:
            return _literal(given, f"--{key}")
        value = self.plan.get(key)
        return self.bundle.get(key) if value is None else value

    def text(self, key: str) -> str | None:
        """A plain string setting; ``None`` when unset or a config expression/reference."""
        value = self.get(key)
        return value if isinstance(value, str) and not value.startswith(("$", "@")) else None


def _spec_overrides(settings: _Settings) -> dict[str, Any]:
    """The ``spec_overrides`` the folds start from.

    ``spec_overrides`` replaces whole top-level spec keys, so the folds' ``splits`` is the spec's own
    ``splits`` (or the override's) with ``cv_folds`` / ``cv_fold`` added by :func:`_fold_overrides`.
    """
    value = settings.get("spec_overrides") or {}
    if not isinstance(value, Mapping):
        raise CVError(f"spec_overrides must be a mapping of spec keys, got {value!r}")
    return dict(value)


def _fold_overrides(base: Mapping[str, Any], spec_splits: Mapping[str, Any], folds: int, fold: int) -> dict:
    splits = {**spec_splits, **dict(base.get("splits") or {}), "cv_folds": folds, "cv_fold": fold}
    return {**base, "splits": splits}


def _sha256(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None


def _check_record(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    return check_resume_record(path, record, _RECORDED, version=CV_VERSION, error=CVError, what="a cross-validation")


def _tracking(overrides: Sequence[str]) -> bool:
    return option_value(overrides, "--tracking") == "mlflow"


def _parent_run(experiment: str | None, output_dir: Path, folds: int) -> tuple[str, str]:
    """Open (create) the parent MLflow run of the folds; returns ``(tracking_uri, run_id)``."""
    from mlflow.tracking import MlflowClient

    from medmtl.tracking.store import usable_tracking_uri

    uri = usable_tracking_uri(fallback_dir=output_dir)
    name = experiment or "medmtl"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=f"cv_{output_dir.name}", tags={"medmtl.cv_folds": str(folds)})
    return uri, run.info.run_id


def _fold_done(run: Path) -> bool:
    return (run / OOF_DIR / "summary.json").is_file()


def run_cv(
    bundle: str | os.PathLike,
    folds: int,
    output_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    plan: str | os.PathLike | None = None,
    runner: Callable[[list[str], Mapping[str, str]], int] | None = None,
    test: bool = True,
) -> CVResult:
    """Train and evaluate the ``folds`` folds of ``bundle`` into ``output_dir``, resuming what is there.

    Args:
        bundle: bundle name or folder.
        folds: number of folds (>= 2) of the development cases.
        output_dir: the cross-validation's folder (``fold_<k>`` inside).
        overrides: bundle overrides for every fold (``--key value`` as ``medmtl run`` takes them).
        plan: a ``plan.yaml`` the folds train with.
        runner: runs one ``medmtl`` argv with an environment, returns its exit status (default: a
            subprocess; tests may run it in-process).
        test: also evaluate every fold and the fold ensemble (:class:`~medmtl.networks.ensemble.FoldEnsemble`)
            on the test split (``fold_<k>/test``, ``ensemble_test``).

    Raises:
        CVError: bad settings, another cross-validation in ``output_dir``, a fold that failed.
    """
    if folds < 2:
        raise CVError(f"--folds must be at least 2, got {folds}")
    bundle_dir(bundle)  # a clear error for an unknown bundle before anything is written
    output_dir = Path(output_dir)
    plan_path = Path(plan) if plan is not None else None
    overrides = list(overrides)
    for reserved in ("--output_dir", "--eval_dir", "--ckpt_path", "--mlflow_tags"):
        if option_value(overrides, reserved) is not None:
            raise CVError(f"{reserved} is set by medmtl cv per fold; leave it out of the overrides")
    settings = _Settings.read(bundle, overrides, plan_path)
    base = _spec_overrides(settings)
    data_spec = settings.text("data_spec")
    if data_spec is None:
        raise CVError(f"cannot tell the data spec of bundle {bundle}: give --data_spec")
    from medmtl.data.spec import load_spec

    spec_splits = load_spec(data_spec).splits.model_dump()
    if (base.get("splits") or spec_splits).get("method") == "kfold":
        raise CVError(
            "the spec splits with method 'kfold' (every case in a fold, no test split): medmtl cv folds the "
            "development cases of a train/test split; give --spec_overrides with a 'fractions' or 'field' split"
        )
    passed = without_options(overrides, ["--spec_overrides"])
    record = {
        "version": CV_VERSION,
        "bundle": str(bundle),
        "folds": folds,
        "overrides": passed,
        "plan": str(plan_path) if plan_path else None,
        "plan_sha256": _sha256(plan_path),
        "spec_overrides": base,
    }
    record_path = output_dir / CV_FILE
    if record_path.exists():
        record = {
            **record,
            **{k: v for k, v in _check_record(record_path, record).items() if k in ("parent_run_id", "tracking_uri")},
        }
    env = dict(os.environ)
    if _tracking(passed):
        if record.get("parent_run_id") is None:
            uri, record["parent_run_id"] = _parent_run(settings.text("experiment_name"), output_dir, folds)
            record["tracking_uri"] = uri
        env["MLFLOW_TRACKING_URI"] = record.get("tracking_uri") or env.get("MLFLOW_TRACKING_URI", "")
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    run = runner or run_medmtl
    tags = {"mlflow.parentRunId": record["parent_run_id"]} if record.get("parent_run_id") else None
    result = CVResult(output_dir, [], record.get("parent_run_id"))
    for fold in range(folds):
        folder = fold_dir(output_dir, fold)
        result.fold_eval_dirs.append(folder / OOF_DIR)
        if _fold_done(folder):
            logger.info("fold %d/%d: done before (%s), skipped", fold + 1, folds, folder / OOF_DIR)
            result.skipped.append(fold)
            continue
        common = [*passed, "--spec_overrides", repr(_fold_overrides(base, spec_splits, folds, fold))]
        if tags:
            common += ["--mlflow_tags", repr({**tags, "medmtl.cv_fold": str(fold)})]
        plan_args = ["--plan", str(plan_path)] if plan_path else []
        logger.info("fold %d/%d: training into %s", fold + 1, folds, folder)
        train = ["run", str(bundle), "train", *plan_args, "--output_dir", str(folder), *common]
        if run(train, env) != 0:
            raise CVError(f"fold {fold} training failed (see its log above); run medmtl cv again to resume it")
        evaluate = [
            "run",
            str(bundle),
            "evaluate",
            "--output_dir",
            str(folder),
            "--validate::split",
            "val",
            "--eval_dir",
            str(folder / OOF_DIR),
            "--ckpt_path",
            str(folder / "models" / "last.pt"),
            # per-case Dice of the postprocessing candidates, chosen on in cv_report (postprocessing.json)
            "--validate::key_metric::mean_primary::postprocessing_candidates",
            "True",
            *common,
        ]
        logger.info("fold %d/%d: out-of-fold evaluation into %s", fold + 1, folds, folder / OOF_DIR)
        if run(evaluate, env) != 0:
            raise CVError(f"fold {fold} out-of-fold evaluation failed (see its log above); run medmtl cv again")
    if test:
        from medmtl.experiments.cv_report import fit_out_of_fold_choices

        # chosen on the out-of-fold predictions before any test case is seen, then applied to every test evaluation
        result.choices = fit_out_of_fold_choices(output_dir, result.fold_eval_dirs)
        chosen = result.choices.bundle_overrides(output_dir)
        _evaluate_test(
            str(bundle),
            output_dir,
            folds,
            [*passed, "--spec_overrides", repr(_fold_overrides(base, spec_splits, folds, 0)), *chosen],
            tags,
            run,
            env,
            result,
        )
    if result.parent_run_id:
        from mlflow.tracking import MlflowClient

        MlflowClient(env["MLFLOW_TRACKING_URI"]).set_terminated(result.parent_run_id)
    return result


def _evaluate_test(
    bundle: str,
    output_dir: Path,
    folds: int,
    common: list[str],
    tags: Mapping[str, str] | None,
    run: Callable[[list[str], Mapping[str, str]], int],
    env: Mapping[str, str],
    result: CVResult,
) -> None:
    """Each fold's final weights and their ensemble on the test split (the same cases for every fold)."""

    def evaluate(run_dir: Path, eval_dir: Path, ckpt: Path, what: str, extra: Sequence[str] = ()) -> None:
        if (eval_dir / "summary.json").is_file():
            return
        tagged = ["--mlflow_tags", repr({**tags, "medmtl.cv_stage": what})] if tags else []
        argv = ["run", bundle, "evaluate", "--output_dir", str(run_dir), "--eval_dir", str(eval_dir)]
        argv += ["--ckpt_path", str(ckpt), *extra, *common, *tagged]
        logger.info("%s: evaluation on the test split into %s", what, eval_dir)
        if run(argv, env) != 0:
            raise CVError(f"{what}: evaluation on the test split failed (see its log above); run medmtl cv again")

    for fold in range(folds):
        result.fold_test_dirs.append(fold_dir(output_dir, fold) / TEST_DIR)
        evaluate(fold_dir(output_dir, fold), result.fold_test_dirs[-1], _last(output_dir, fold), f"fold {fold}")
    ensemble = ensemble_checkpoint(output_dir, folds)
    result.ensemble_dir = output_dir / ENSEMBLE_DIR
    evaluate(
        fold_dir(output_dir, 0), result.ensemble_dir, ensemble, "fold ensemble", ["--network", _ensemble_network(folds)]
    )


def _last(output_dir: Path, fold: int) -> Path:
    return fold_dir(output_dir, fold) / "models" / "last.pt"


def _ensemble_network(folds: int) -> str:
    """The bundle's network as a :class:`FoldEnsemble` of ``folds`` members (each fold's answer kept for its spread)."""
    return f"$medmtl.networks.FoldEnsemble.replicate(@network_def, @tasks, {folds}, return_members=True).to(@device)"


def ensemble_checkpoint(output_dir: str | os.PathLike, folds: int) -> Path:
    """``RUN/ensemble.pt``: the folds' final weights in one checkpoint (written the first time it is needed)."""
    path = Path(output_dir) / ENSEMBLE_CHECKPOINT
    if not path.is_file():
        write_ensemble_checkpoint([_last(Path(output_dir), k) for k in range(folds)], path)
    return path


def is_cv_run(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` is the folder of a ``medmtl cv`` (holds ``cv.json``)."""
    return (Path(output_dir) / CV_FILE).is_file()


def ensemble_overrides(output_dir: str | os.PathLike, workflows: Sequence[str], given: Sequence[str] = ()) -> list[str]:
    """Bundle overrides that evaluate / infer with a finished cross-validation as one model.

    The folds' ensemble (``ensemble.pt``, :class:`FoldEnsemble`) on fold 0's run record (every fold
    has the same configuration and test split), with the decisions, temperatures and postprocessing
    chosen on the out-of-fold predictions, writing into the cross-validation's own folder
    (``eval`` / ``predictions``). A key in ``given`` (the user's overrides) is left to the user.

    Raises:
        CVError: not a cross-validation folder, or a fold not trained yet.
    """
    output_dir = Path(output_dir)
    record = read_json(output_dir / CV_FILE, CVError, "run medmtl cv into that folder first")
    folds = record.get("folds") if isinstance(record, dict) else None
    if not isinstance(folds, int) or folds < 2:
        raise CVError(f"{output_dir / CV_FILE} names no fold count; it was not written by medmtl cv")
    missing = [k for k in range(folds) if not _last(output_dir, k).is_file()]
    if missing:
        raise CVError(f"{output_dir}: folds {missing} have no models/last.pt yet; run medmtl cv again to finish them")
    wanted = {
        "--output_dir": str(fold_dir(output_dir, 0)),
        "--ckpt_path": str(ensemble_checkpoint(output_dir, folds)),
        "--network": _ensemble_network(folds),
    }
    if "evaluate" in workflows:
        wanted["--eval_dir"] = str(output_dir / "eval")
    if "inference" in workflows:
        wanted["--infer_dir"] = str(output_dir / "predictions")
    from medmtl.experiments.cv_report import CHOICE_FILES

    for key, name in CHOICE_FILES.items():
        if (output_dir / name).is_file():
            wanted[key] = str(output_dir / name)
    return [x for key, value in wanted.items() if option_value(given, key) is None for x in (key, value)]


def write_ensemble_checkpoint(checkpoints: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """Save the members' weights as one checkpoint a bundle evaluation loads into :meth:`FoldEnsemble.replicate`.

    The first member's recorded run configuration goes with it: the members share it (one cross-validation),
    and evaluation reads the tasks, network and preprocessing from it.
    """
    first = torch.load(Path(checkpoints[0]), map_location="cpu", weights_only=True)
    content: dict = {"network": ensemble_state_dict(checkpoints)}
    if isinstance(first, dict) and RUN_CONFIG_KEY in first:
        content[RUN_CONFIG_KEY] = first[RUN_CONFIG_KEY]
    return atomic_write_with(Path(path), lambda handle: torch.save(content, handle))
