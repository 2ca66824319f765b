"""MultiTaskMetricHandler on ignite / MONAI engines: keys, values equal to direct computation, key metric."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from medmtl.metrics import MultiTaskMetricHandler, collect_results, mean_primary


def _engine() -> Engine:
    """An engine whose output is the batch itself: a list of per-sample dicts (the evaluator contract)."""
    return Engine(lambda engine, batch: batch)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def test_handler_writes_task_metrics_equal_to_direct_computation(tasks, samples):
    engine = _engine()
    handler = MultiTaskMetricHandler(tasks)
    handler.attach(engine, "mean_primary")
    batches = [samples[i : i + 5] for i in range(0, len(samples), 5)]
    engine.run(batches, max_epochs=1)
    expected = collect_results(tasks, samples).metrics()
    metrics = engine.state.metrics
    for key in ("lesion/dice", "lesion/hd95", "lesion/dice_not_nans", "malignant/auroc", "malignant/kappa"):
        assert key in metrics
    for key in ("findings/auroc_acl", "diagnosis/balanced_accuracy", "diagnosis/f1_macro", "mean_primary"):
        assert key in metrics
    for key, value in expected.items():
        assert _same(metrics[key], value), key
    primaries = ("lesion/dice", "malignant/auroc", "findings/auroc", "diagnosis/balanced_accuracy")
    assert metrics["mean_primary"] == pytest.approx(sum(metrics[k] for k in primaries) / 4)
    details = engine.state.metric_details
    assert details["lesion/dice"].shape == (len(samples), 2)
    assert details["diagnosis/probability"].shape == (len(samples), 3)
    assert details["malignant/present"].sum() == sum(s["malignant_present"] for s in samples)


def test_handler_resets_between_epochs_and_accepts_batch_dicts(tasks, samples):
    engine = _engine()
    MultiTaskMetricHandler(tasks).attach(engine)
    engine.run([samples[:18], samples[18:]], max_epochs=2)
    expected = collect_results(tasks, samples).metrics()
    assert engine.state.metrics["malignant/auroc"] == pytest.approx(expected["malignant/auroc"])

    # decollate=False: one dict of batch-first values per iteration
    cls_tasks = tasks[1:]
    keys = [k for k in samples[0] if not k.endswith("lesion") and k != "lesion_present"]

    def collate(chunk):
        out = {k: [s[k] for s in chunk] for k in keys}
        return {k: torch.stack(v) if isinstance(v[0], torch.Tensor) else v for k, v in out.items()}

    engine2 = _engine()
    MultiTaskMetricHandler(cls_tasks).attach(engine2, "score")
    engine2.run([collate(samples[:18]), collate(samples[18:])], max_epochs=1)
    direct = collect_results(cls_tasks, samples).metrics()
    assert engine2.state.metrics["diagnosis/kappa"] == pytest.approx(direct["diagnosis/kappa"])
    assert engine2.state.metrics["score"] == pytest.approx(direct["mean_primary"])


def test_key_metric_respects_direction_and_override(kit):
    metrics = {"lesion/dice": 0.8, "lesion/hd95": 4.0, "malignant/auroc": 0.6}
    assert mean_primary(metrics, [kit.SEG, kit.BIN]) == pytest.approx(0.7)
    assert mean_primary(metrics, [kit.SEG, kit.BIN], primary={"lesion": "hd95"}) == pytest.approx((-4.0 + 0.6) / 2)
    assert mean_primary({"lesion/dice": math.nan, "malignant/auroc": 0.6}, [kit.SEG, kit.BIN]) == pytest.approx(0.6)
    with pytest.raises(KeyError, match="diagnosis/balanced_accuracy"):
        mean_primary(metrics, [kit.MCL])
    with pytest.raises(ValueError, match="not among"):
        MultiTaskMetricHandler([kit.SEG], primary={"nope": "dice"})


def test_handler_bootstrap_option(tasks, samples):
    engine = _engine()
    MultiTaskMetricHandler(tasks, bootstrap=200, save_details=False).attach(engine)
    engine.run([samples], max_epochs=1)
    m = engine.state.metrics
    assert m["malignant/auroc_ci_low"] <= m["malignant/auroc"] <= m["malignant/auroc_ci_high"]
    assert m["lesion/dice_ci_low"] <= m["lesion/dice"] <= m["lesion/dice_ci_high"]


def test_handler_as_key_metric_of_supervised_evaluator(kit):
    """A MONAI SupervisedEvaluator with dict outputs, flattened to the engine contract, selects on mean_primary."""
    engines = pytest.importorskip("medmtl.engines")
    if not hasattr(engines, "MultiTaskPrepareBatch") or not hasattr(engines, "FlattenTaskOutputsd"):
        pytest.skip("medmtl.engines lacks MultiTaskPrepareBatch / FlattenTaskOutputsd")
    from monai.engines import SupervisedEvaluator

    tasks = [kit.SEG, kit.BIN, kit.MCL]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seg = torch.nn.Conv2d(1, 3, 1)
            self.fc = torch.nn.Linear(1, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            pooled = self.fc(x.mean(dim=(2, 3)))
            return {"lesion": self.seg(x), "malignant": pooled[:, :1], "diagnosis": pooled[:, 1:]}

    torch.manual_seed(0)
    data = []
    for b in range(3):
        image = torch.rand(4, 1, 8, 8)
        data.append(
            {
                "image": image,
                "lesion": (image > 0.5).long(),
                "lesion_present": torch.tensor([True, False, True, True]),
                "malignant": torch.tensor([[1.0], [0.0], [1.0], [0.0]]),
                "malignant_present": torch.tensor([True, True, b > 0, True]),
                "diagnosis": torch.tensor([0, 1, 2, 1]),
                "diagnosis_present": torch.ones(4, dtype=torch.bool),
                "case_id": [f"b{b}_{i}" for i in range(4)],
            }
        )
    handler = MultiTaskMetricHandler(tasks)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=Net(),
        prepare_batch=engines.MultiTaskPrepareBatch(tasks),
        key_val_metric={"mean_primary": handler},
    )
    engines.FlattenTaskOutputsd(tasks).attach(evaluator)
    outputs: list = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    evaluator.run()
    direct = collect_results(tasks, outputs).metrics()
    assert evaluator.state.metrics["mean_primary"] == pytest.approx(direct["mean_primary"])
    assert evaluator.state.best_metric == pytest.approx(direct["mean_primary"])
    assert direct["lesion/num_cases"] == 9 and direct["malignant/num_cases"] == 11
    for key in ("lesion/dice", "malignant/auroc", "diagnosis/balanced_accuracy"):
        assert _same(evaluator.state.metrics[key], direct[key]), key
