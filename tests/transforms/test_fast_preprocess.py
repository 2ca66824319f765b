"""FastPercentileScaled / FastResized: MONAI's values, metadata and inverse, computed more cheaply."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resized, ScaleIntensityRangePercentilesd

from medmtl.data.spec import load_spec
from medmtl.transforms import build_transforms
from medmtl.transforms.fast_preprocess import (
    FastPercentileScaled,
    FastResized,
    exact_percentiles,
    monai_reference,
    resize_matrix,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_PERCENTILES = {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True}


def _picture(seed: int, shape=(1, 457, 563), integer: bool = True) -> MetaTensor:
    """An 8-bit-like picture of BUSI's size: smooth structure, speckle, saturated corners."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 6, shape[1]), torch.linspace(0, 6, shape[2]), indexing="ij")
    values = 120 + 80 * torch.sin(x) * torch.cos(y) + 30 * torch.randn(shape, generator=g)
    values[:, :20, :20] = 255
    values = values.clamp(0, 255)
    return MetaTensor(values.round() if integer else values)


@pytest.mark.parametrize("integer", [True, False])
def test_percentiles_equal_numpy(integer: bool) -> None:
    image = _picture(0, integer=integer)
    q = [0.5, 25.0, 99.5, 100.0]
    np.testing.assert_allclose(exact_percentiles(image, q), np.percentile(image.numpy(), q), rtol=1e-12, atol=1e-9)


def test_same_output_metadata_and_inverse_as_monai() -> None:
    """Image within float32 rounding (max |diff| <= 1e-5), mask exact, the same inverse back to the input size."""
    reference = [ScaleIntensityRangePercentilesd("image", **_PERCENTILES)]
    fast = [FastPercentileScaled("image", **_PERCENTILES)]
    resize = {"spatial_size": (128, 128), "mode": ("bilinear", "nearest"), "anti_aliasing": [True, False]}
    reference.append(Resized(["image", "mask"], **resize))
    fast.append(FastResized(["image", "mask"], **resize))
    for seed in range(3):
        image = _picture(seed)
        mask = MetaTensor((image > 200).float())
        outputs = []
        for chain in (reference, fast):
            item = {"image": image.clone(), "mask": mask.clone()}
            for step in chain:
                item = step(item)
            outputs.append(item)
        ref, out = outputs
        assert out["image"].shape == ref["image"].shape == (1, 128, 128)
        assert float((out["image"] - ref["image"]).abs().max()) <= 1e-5
        assert torch.equal(out["mask"].as_tensor(), ref["mask"].as_tensor())
        assert [op["orig_size"] for op in out["image"].applied_operations] == [(457, 563)]
        back_ref = reference[1].inverse(dict(ref))
        back = fast[1].inverse(dict(out))
        assert back["mask"].shape == mask.shape
        assert torch.equal(back["mask"].as_tensor(), back_ref["mask"].as_tensor())


def test_constant_image_as_monai() -> None:
    """A blank picture (a_min == a_max): MONAI's fallback (shift to b_min, with its warning), not a division by 0."""
    image = MetaTensor(torch.full((1, 30, 40), 7.0))
    with pytest.warns(Warning, match="Divide by zero"):
        ref = ScaleIntensityRangePercentilesd("image", **_PERCENTILES)({"image": image.clone()})["image"]
    with pytest.warns(Warning, match="Divide by zero"):
        out = FastPercentileScaled("image", **_PERCENTILES)({"image": image.clone()})["image"]
    assert out.dtype == ref.dtype and torch.equal(out.as_tensor(), ref.as_tensor())


def test_3d_and_mixed_up_and_down_sampling() -> None:
    volume = torch.rand(2, 60, 47, 30, generator=torch.Generator().manual_seed(1)) * 100
    args = {"spatial_size": (24, 30, 40), "mode": "trilinear", "anti_aliasing": True}
    ref = Resized("v", **args)({"v": volume})["v"]
    out = FastResized("v", **args)({"v": volume})["v"]
    assert float((out - ref).abs().max()) <= 1e-5 * 100


def test_demo_masks_and_metrics_unchanged(tmp_path) -> None:
    """The preset chain before and after: masks equal, images within 1e-5, a fixed network's Dice equal."""
    from monai.metrics import DiceMetric

    from medmtl.data.demo import generate_demo2d

    generate_demo2d(tmp_path / "demo2d", 10, 0)
    spec = load_spec("data_specs/demo.yaml", root=str(tmp_path / "demo2d"))
    data = spec.build_cases().datalist("all")
    after = build_transforms(spec, 40, train=False)  # 64 px demo images: a downsampling resize
    before = monai_reference(after)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 5, padding=2)
    dice = {"before": DiceMetric(include_background=False), "after": DiceMetric(include_background=False)}
    for case in data:
        outputs = {name: chain(dict(case)) for name, chain in (("before", before), ("after", after))}
        assert torch.equal(outputs["after"]["lesion"].as_tensor(), outputs["before"]["lesion"].as_tensor())
        assert float((outputs["after"]["image"] - outputs["before"]["image"]).abs().max()) <= 1e-5
        for name, out in outputs.items():
            with torch.no_grad():
                pred = net(out["image"].as_tensor()[None]).argmax(1, keepdim=True)
            label = out["lesion"].as_tensor()[None]
            dice[name](torch.cat([pred == 0, pred == 1], 1).float(), torch.cat([label == 0, label == 1], 1).float())
    scores = {name: float(metric.aggregate()) for name, metric in dice.items()}
    assert scores["after"] == pytest.approx(scores["before"], abs=1e-6)


def test_resize_matrix_is_a_plain_tensor() -> None:
    """A MetaTensor here made every resize product pay metadata bookkeeping (more than the arithmetic)."""
    assert type(resize_matrix(257, 128, 0.5)) is torch.Tensor


@pytest.mark.shared_data
def test_real_busi_equals_the_monai_chain(shared_data, specs_dir) -> None:
    """Real BUSI pictures (one and several mask files, a normal case) through the preset and MONAI's chain.

    Images within 1e-5, masks and labels equal, and the same geometry and transform record (``Invertd``
    maps predictions back with them).
    """
    root = shared_data / "busi" / "Dataset_BUSI_with_GT"
    spec = load_spec(specs_dir / "breast_ultrasound.yaml", root=str(root))
    images = sorted(root.glob("*/*).png"))
    several = [Path(str(m).replace("_mask_1.png", ".png")) for m in sorted(root.glob("*/*_mask_1.png"))[:2]]
    cases = []
    for image in several + images[:2] + images[-2:]:  # benign and normal (blank masks) at both ends
        masks = sorted(str(m) for m in image.parent.glob(f"{glob.escape(image.stem)}_mask*.png"))
        diagnosis = ["normal", "benign", "malignant"].index(image.parent.name)
        cases.append({"image": str(image), "lesion": masks if len(masks) > 1 else masks[0], "diagnosis": diagnosis})
    for train in (False, True):  # evaluation chain, and the training chain cached with batch_augment
        fast = build_transforms(spec, 128, train=train, batch_augment=True)
        reference = monai_reference(fast)
        for case in cases:
            out, ref = fast(dict(case)), reference(dict(case))
            assert float((out["image"] - ref["image"]).abs().max()) <= 1e-5
            assert torch.equal(out["lesion"].as_tensor(), ref["lesion"].as_tensor())
            assert torch.equal(out["diagnosis"], ref["diagnosis"])
            for key in ("image", "lesion"):
                assert torch.equal(out[key].affine, ref[key].affine)
                ops = [(op["orig_size"], op["extra_info"]["mode"]) for op in out[key].applied_operations]
                assert ops == [(op["orig_size"], op["extra_info"]["mode"]) for op in ref[key].applied_operations]
