"""Segmentation postprocessing: candidates on planted masks, nnU-Net's keep-only-if-better rule, the record,
the handler's candidate Dice through ``predictions.npz``, and the writer applying the record."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medmtl.data import Task
from medmtl.inference import MultiTaskPredictionWriter
from medmtl.metrics import MultiTaskMetricHandler
from medmtl.metrics.postprocessing import (
    POSTPROCESSING_FILE,
    Postprocessing,
    PostprocessingFileError,
    PostprocessingOp,
    apply_postprocessing,
    candidate_dice,
    candidate_metric,
    choose_postprocessing,
    default_candidates,
)
from medmtl.metrics.results import EvaluationResults, TaskResult

LESION = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
MALIGNANT = Task(name="malignant", kind="binary")
SIZE = 24


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks, written out (independent of MONAI)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    return 2.0 * (pred & truth).sum() / (pred.sum() + truth.sum())


def _lesion_and_blob(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truth: one 8x8 lesion. Prediction: the lesion cut by one row, plus a spurious 5x5 blob far from it."""
    truth = np.zeros((SIZE, SIZE), np.int64)
    truth[2 + shift : 10 + shift, 2:10] = 1
    pred = truth.copy()
    pred[9 + shift, 2:10] = 0
    pred[16:21, 16:21] = 1  # 25 pixels: more than a quarter of the lesion, so only keep_largest removes it
    return pred, truth


def _two_lesions(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction: two separate true lesions (8x8 and 5x5), both predicted."""
    truth = np.zeros((SIZE, SIZE), np.int64)
    truth[2 + shift : 10 + shift, 2:10] = 1
    truth[16:21, 16:21] = 1
    return truth.copy(), truth


def _logits(label_map: np.ndarray, num_classes: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(label_map), num_classes).movedim(-1, 0).float() * 4.0


def _samples(cases: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    return [
        {
            "case_id": f"c{i}",
            "pred_lesion": _logits(pred),
            "label_lesion": torch.as_tensor(truth)[None],
            "lesion_present": True,
        }
        for i, (pred, truth) in enumerate(cases)
    ]


def test_candidate_dice_equals_a_direct_computation_on_planted_masks() -> None:
    ops = default_candidates(LESION)
    assert [op.name for op in ops] == ["remove_small_0.1", "remove_small_0.25", "keep_largest"]
    pred, truth = _lesion_and_blob()
    dice = candidate_dice(_logits(pred), torch.as_tensor(truth)[None], 2, ops, "lesion")
    lesion_only = pred.copy()
    lesion_only[16:21, 16:21] = 0
    assert float(dice["dice_pp_keep_largest"][0]) == pytest.approx(_dice(lesion_only, truth))
    assert float(dice["dice_pp_remove_small_0.25"][0]) == pytest.approx(_dice(pred, truth))  # blob is 25/56 > 0.25
    assert _dice(lesion_only, truth) > _dice(pred, truth)  # the planted blob costs Dice
    pred, truth = _two_lesions()
    dice = candidate_dice(_logits(pred), torch.as_tensor(truth)[None], 2, ops, "lesion")
    largest_only = pred.copy()
    largest_only[16:21, 16:21] = 0
    assert float(dice["dice_pp_keep_largest"][0]) == pytest.approx(_dice(largest_only, truth))
    assert _dice(largest_only, truth) < 1.0  # dropping a true lesion costs Dice
    assert float(dice["dice_pp_remove_small_0.1"][0]) == pytest.approx(1.0)


def test_ops_leave_their_input_alone_and_work_per_class_or_on_the_whole_foreground() -> None:
    x = torch.zeros(1, 12, 12, dtype=torch.long)
    x[0, 0:4, 0:4] = 1  # class 1: 16 px + a 1 px speck
    x[0, 10, 10] = 1
    x[0, 6:12, 0:3] = 2  # class 2: 18 px, the largest foreground region
    x[0, 0, 11] = 2
    before = x.clone()
    per_class = PostprocessingOp.from_name("keep_largest")(x, 3)
    whole = PostprocessingOp.from_name("keep_largest_foreground")(x, 3)
    small = PostprocessingOp.from_name("remove_small_0.1")(x, 3)  # < 1.6 px (class 1), < 1.8 px (class 2)
    assert torch.equal(x, before)
    assert int((per_class == 1).sum()) == 16 and int((per_class == 2).sum()) == 18
    assert int((whole == 1).sum()) == 0 and int((whole == 2).sum()) == 18
    assert torch.equal(small, per_class)
    assert int((PostprocessingOp.from_name("remove_small_0.05")(x, 3) > 0).sum()) == int((x > 0).sum())
    # the threshold is strict on every scikit-image version: 0.25 x 20 px keeps a 5 px component, drops 4 px
    y = torch.zeros(1, 12, 12, dtype=torch.long)
    y[0, 0:4, 0:5] = 1
    y[0, 8, 0:5] = 1
    y[0, 11, 0:4] = 1
    kept = PostprocessingOp.from_name("remove_small_0.25")(y, 2)
    assert int(kept[0, 8].sum()) == 5 and int(kept[0, 11].sum()) == 0
    with pytest.raises(ValueError, match="fraction"):
        PostprocessingOp.from_name("remove_small_2")
    with pytest.raises(ValueError, match="not one of"):
        PostprocessingOp("dilate")


def _handler_results(cases: list[tuple[np.ndarray, np.ndarray]], **kwargs) -> tuple[MultiTaskMetricHandler, float]:
    handler = MultiTaskMetricHandler([LESION], **kwargs)
    handler.update(_samples(cases))
    return handler, handler.compute()


def test_keep_largest_is_chosen_where_it_raises_dice_and_not_where_it_lowers_it() -> None:
    spurious = [_lesion_and_blob(shift) for shift in range(4)]
    handler, _ = _handler_results(spurious, postprocessing_candidates=True)
    record = choose_postprocessing(handler.results())
    entry = record["lesion"]
    expected = np.mean([_dice(p * (np.arange(SIZE)[:, None] < 12), t) for p, t in spurious])
    assert entry.op.name == "keep_largest"
    assert entry.dice["keep_largest"] == pytest.approx(expected)
    assert entry.dice["keep_largest"] > entry.dice["none"] == pytest.approx(np.mean([_dice(p, t) for p, t in spurious]))
    assert entry.num_cases == 4

    several = [_two_lesions(shift) for shift in range(4)]
    handler, _ = _handler_results(several, postprocessing_candidates=True)
    entry = choose_postprocessing(handler.results())["lesion"]
    assert entry.dice["keep_largest"] < entry.dice["none"] == pytest.approx(1.0)
    assert entry.dice["remove_small_0.1"] == pytest.approx(1.0)  # a tie with none: nothing is applied
    assert entry.op.name == "none"


def test_the_rule_needs_a_real_gain_and_no_class_worse() -> None:
    seg = Task(name="tissue", kind="segmentation", classes=["background", "a", "b"])
    base = np.array([[0.5, 0.9], [0.6, 0.8]])

    def chosen(candidate: np.ndarray, **kwargs) -> str:
        result = TaskResult(seg, ["x", "y"], case_metrics={"dice": base, "dice_pp_keep_largest": candidate})
        return choose_postprocessing([result], **kwargs)["tissue"].op.name

    assert chosen(base + 0.01) == "keep_largest"
    assert chosen(base + 0.01, min_improvement=0.05) == "none"
    assert chosen(base + 1e-12) == "none"  # float noise is a tie
    assert chosen(base + np.array([0.3, -0.05])) == "none"  # mean up, class b down: nnU-Net refuses it
    with pytest.raises(ValueError, match="no candidate Dice.*postprocessing_candidates"):
        choose_postprocessing([TaskResult(seg, ["x", "y"], case_metrics={"dice": base})])


def test_record_round_trips_and_bad_files_are_refused_naming_the_file(tmp_path) -> None:
    handler, _ = _handler_results([_lesion_and_blob(s) for s in range(3)], postprocessing_candidates=True)
    record = choose_postprocessing(handler.results())
    path = record.save(tmp_path)
    assert path == tmp_path / POSTPROCESSING_FILE
    again = Postprocessing.load(path, [LESION, MALIGNANT])
    assert again.ops() == record.ops() == {"lesion": "keep_largest"}
    assert again["lesion"].dice == pytest.approx(record["lesion"].dice)
    assert again.to_json() == record.to_json()

    data = json.loads(path.read_text())
    other = Task(name="organ", kind="segmentation", classes=["background", "organ"])
    with pytest.raises(PostprocessingFileError, match=rf"{path}.*segmentation tasks \['lesion'\].*\['organ'\]"):
        Postprocessing.load(path, [other])
    three = Task(name="lesion", kind="segmentation", classes=["background", "a", "b"])
    with pytest.raises(PostprocessingFileError, match="1 foreground classes in the file, 2 in the model"):
        Postprocessing.load(path, [three])
    bad = tmp_path / "bad.json"
    for broken, message in (
        ({**data, "version": 99}, "version 99"),
        ({**data, "format": "x"}, "not a medmtl postprocessing file"),
        (
            {**data, "postprocessing": {"lesion": {**data["postprocessing"]["lesion"], "op": "dilate", "classes": 3}}},
            r"'classes' must be a list",
        ),
        (
            {**data, "postprocessing": {"lesion": {**data["postprocessing"]["lesion"], "op": "remove_small"}}},
            "fraction in \\(0, 1\\]",
        ),
    ):
        bad.write_text(json.dumps(broken))
        with pytest.raises(PostprocessingFileError, match=message) as err:
            Postprocessing.load(bad, [LESION])
        assert str(bad) in str(err.value)
    bad.write_text("{not json")
    with pytest.raises(PostprocessingFileError, match=f"{bad} is not valid JSON"):
        Postprocessing.load(bad)
    with pytest.raises(FileNotFoundError, match="choose it again"):
        Postprocessing.load(tmp_path / "missing.json")


def test_handler_candidates_round_trip_through_predictions_npz_and_are_off_by_default(tmp_path) -> None:
    cases = [_lesion_and_blob(s) for s in range(3)] + [_two_lesions(s) for s in range(2)]
    plain, plain_key = _handler_results(cases)
    assert not [m for m in plain.last_metrics if "dice_pp_" in m]
    assert list(plain.results()["lesion"].case_metrics) == ["dice", "iou", "hd95", "precision", "recall"]

    handler, key = _handler_results(cases, postprocessing_candidates=["keep_largest"])
    assert key == plain_key  # the headline Dice is the prediction's own
    metric = candidate_metric(PostprocessingOp("keep_largest"))
    per_case = handler.results()["lesion"].case_metrics[metric][:, 0]
    expected = []
    for pred, truth in cases:
        kept = pred.copy()
        kept[16:21, 16:21] = 0  # the 5x5 region is the smaller component in every planted case
        expected.append(_dice(kept, truth))
    np.testing.assert_allclose(per_case, expected)
    assert handler.last_metrics[f"lesion/{metric}"] == pytest.approx(np.mean(expected))

    path = handler.results().save(tmp_path / "predictions.npz")
    loaded = EvaluationResults.load(path, [LESION])["lesion"]
    np.testing.assert_array_equal(loaded.case_metrics[metric], handler.results()["lesion"].case_metrics[metric])
    # 3 cases gain about 0.16 each, 2 lose about 0.16 each: the mean rises, so keep_largest is kept
    gain = np.mean(expected) - np.mean([_dice(p, t) for p, t in cases])
    assert gain > 0
    assert choose_postprocessing(EvaluationResults.load(path, [LESION])).ops() == {"lesion": "keep_largest"}


def test_handler_applies_a_record_before_the_scores(tmp_path) -> None:
    cases = [_lesion_and_blob(s) for s in range(3)]
    chooser, _ = _handler_results(cases, postprocessing_candidates=True)
    path = choose_postprocessing(chooser.results()).save(tmp_path / POSTPROCESSING_FILE)
    applied, key = _handler_results(cases, postprocessing=str(path))
    assert key == pytest.approx(chooser.last_metrics["lesion/dice_pp_keep_largest"])
    assert key > chooser.last_metrics["lesion/dice"]
    with pytest.raises(PostprocessingFileError, match="segmentation tasks"):
        MultiTaskMetricHandler([Task(name="organ", kind="segmentation", classes=["bg", "organ"])], postprocessing=path)


def test_writer_applies_the_record_to_the_written_mask(tmp_path) -> None:
    cases = [_lesion_and_blob(s) for s in range(3)]
    chooser, _ = _handler_results(cases, postprocessing_candidates=True)
    record_path = choose_postprocessing(chooser.results()).save(tmp_path / POSTPROCESSING_FILE)
    pred, _ = _lesion_and_blob()
    sample = {
        "case_id": "c0",
        "image": MetaTensor(torch.rand(1, SIZE, SIZE)),
        "pred_lesion": _logits(pred),
        "pred_malignant": torch.tensor([1.0]),
    }
    tasks = [LESION, MALIGNANT]
    rows = {}
    for name, option in (("plain", None), ("pp", record_path)):
        writer = MultiTaskPredictionWriter(tasks, tmp_path / name, postprocessing=option)
        rows[name] = writer.write_sample(sample)
        writer.rows.append(rows[name])
        writer.write_table()
    plain = np.asarray(Image.open(tmp_path / "plain" / rows["plain"]["lesion_file"])) > 0
    cleaned = np.asarray(Image.open(tmp_path / "pp" / rows["pp"]["lesion_file"])) > 0
    lesion_only = pred.astype(bool)
    lesion_only[16:21, 16:21] = False
    assert plain.sum() == pred.sum() and cleaned.sum() == lesion_only.sum()
    assert np.array_equal(cleaned, lesion_only) or np.array_equal(cleaned, lesion_only.T)
    with open(tmp_path / "pp" / "predictions.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["lesion_postprocessing"] == "keep_largest"
    assert int(table[0]["lesion_voxels"]) == int(lesion_only.sum())
    assert "lesion_postprocessing" not in rows["plain"]
    # the record for one case, as a function
    np.testing.assert_array_equal(
        apply_postprocessing(pred[None].astype(np.uint8), Postprocessing.load(record_path), "lesion")[0],
        lesion_only.astype(np.uint8),
    )
    assert not math.isnan(chooser.last_metrics["lesion/dice"])
