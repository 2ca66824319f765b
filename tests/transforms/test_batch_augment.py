"""BatchAugment: per-sample random parameters on a whole batch, aligned images and masks, resumable."""

from __future__ import annotations

import pytest
import torch

from medmtl.data import Task
from medmtl.engines import MultiTaskPrepareBatch
from medmtl.transforms import BatchAugment

OFF = {"flip_prob": 0.0, "aug_prob": 0.0}


def _squares(batch: int, size: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Binary masks ``(B, 1, *size)``: one off-centre box per sample (so every flip/affine shows)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, 1, *size)
    for b in range(batch):
        lo = [int(torch.randint(1, s // 2, (1,), generator=g)) for s in size]
        box = tuple(slice(start, start + s // 3) for start, s in zip(lo, size, strict=True))
        masks[(b, 0, *box)] = 1.0
    return masks


def test_identity_when_every_probability_is_zero() -> None:
    image = torch.rand(4, 2, 17, 23)
    mask = _squares(4, (17, 23)).long()
    out = BatchAugment(2, label_keys=["mask"], **OFF)({"image": image, "mask": mask, "case_id": ["a"] * 4})
    assert torch.equal(out["image"], image)
    assert torch.equal(out["mask"], mask) and out["mask"].dtype == torch.long
    assert out["case_id"] == ["a"] * 4  # other keys pass through


@pytest.mark.parametrize("axis", [0, 1])
def test_flips_are_exact_and_shared_by_image_and_mask(axis: int) -> None:
    image = torch.rand(16, 1, 9, 11)
    mask = _squares(16, (9, 11))
    augment = BatchAugment(2, flip_axes=[axis], flip_prob=0.5, aug_prob=0.0, label_keys=["mask"], seed=3)
    out = augment({"image": image, "mask": mask})
    flipped = [not torch.equal(out["image"][b], image[b]) for b in range(16)]
    assert 0 < sum(flipped) < 16  # per-sample draws
    for b in range(16):
        expected = image[b].flip(axis + 1) if flipped[b] else image[b]
        assert torch.equal(out["image"][b], expected)
        assert torch.equal(out["mask"][b], mask[b].flip(axis + 1) if flipped[b] else mask[b])


def test_parameters_differ_within_a_batch_and_some_samples_stay_untouched() -> None:
    image = torch.rand(1, 1, 32, 32).expand(16, 1, 32, 32).contiguous()  # the same image 16 times
    out = BatchAugment(2, flip_axes=(), aug_prob=0.5, seed=1)({"image": image})["image"]
    changed = [not torch.equal(out[b], image[b]) for b in range(16)]
    assert 0 < sum(changed) < 16
    distinct = {tuple(out[b].flatten()[:64].tolist()) for b in range(16) if changed[b]}
    assert len(distinct) == sum(changed)  # every augmented sample got its own parameters


@pytest.mark.parametrize("size", [(33, 37), (13, 17, 15)])
def test_masks_stay_label_valued_and_aligned_with_the_image(size: tuple[int, ...]) -> None:
    """An image equal to its mask, augmented with it: the mask keeps its values and the image's shape."""
    mask = _squares(8, size, seed=2)
    index = (mask * 2).long()  # index mask with values {0, 2}
    onehot = torch.cat([1 - mask, mask], dim=1)  # float one-hot
    augment = BatchAugment(
        len(size), aug_prob=1.0, noise_std=0.0, gamma=(1.0, 1.0), label_keys=["index", "onehot"], seed=0
    )
    out = augment({"image": mask.clone(), "index": index, "onehot": onehot})
    assert out["image"].shape == mask.shape and out["index"].shape == index.shape
    assert out["index"].dtype == torch.long and set(out["index"].unique().tolist()) <= {0, 2}
    assert set(out["onehot"].unique().tolist()) <= {0.0, 1.0}
    assert bool((out["onehot"].sum(1) <= 1).all())  # one class per voxel (none in the zero padding)
    assert torch.equal(out["onehot"][:, 1:], (out["index"] == 2).float())  # every label key moved alike
    image_fg, mask_fg = out["image"] > 0.5, out["index"] == 2
    assert not torch.equal(mask_fg.float(), mask)  # the affine did move the masks
    for b in range(8):  # bilinear image vs nearest mask: they differ only along the box's edges
        overlap = (image_fg[b] & mask_fg[b]).sum() / (image_fg[b] | mask_fg[b]).sum().clamp(min=1)
        assert overlap > 0.75, (b, float(overlap))


def test_absent_masks_stay_zero_placeholders() -> None:
    placeholder = torch.zeros(6, 1, 24, 24)
    out = BatchAugment(2, aug_prob=1.0, label_keys=["lesion"])(
        {"image": torch.rand(6, 1, 24, 24), "lesion": placeholder}
    )
    assert torch.equal(out["lesion"], placeholder)


def test_noise_and_contrast_follow_their_ranges() -> None:
    image = torch.linspace(0, 1, 32 * 32).reshape(1, 1, 32, 32).expand(64, 1, 32, 32).contiguous()
    gamma_only = BatchAugment(2, flip_axes=(), rotate_degrees=0, scale=0, translate=0, noise_std=0.0, aug_prob=1.0)
    out = gamma_only({"image": image})["image"]
    torch.testing.assert_close(out.amin(dim=(1, 2, 3)), image.amin(dim=(1, 2, 3)))  # range kept
    torch.testing.assert_close(out.amax(dim=(1, 2, 3)), image.amax(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    value = float(image[0, 0, 16, 16])
    mid = out[:, 0, 16, 16]  # value ** gamma, gamma in (0.75, 1.35)
    assert bool((mid > value**1.35 - 1e-4).all()) and bool((mid < value**0.75 + 1e-4).all()) and mid.std() > 0.01
    noise_only = BatchAugment(2, flip_axes=(), noise_std=0.1, gamma=(1.0, 1.0), aug_prob=1.0, rotate_degrees=0)
    noise_only.scale = noise_only.translate = 0.0
    residual = noise_only({"image": image})["image"] - image
    stds = residual.std(dim=(1, 2, 3))
    assert bool((stds < 0.1 * 1.1).all()) and stds.max() > 0.05 and stds.min() < 0.05


def test_same_seed_same_batches_and_state_dict_round_trip() -> None:
    batch = {"image": torch.rand(4, 1, 20, 20), "mask": _squares(4, (20, 20))}
    a, b = BatchAugment(2, label_keys=["mask"], seed=5), BatchAugment(2, label_keys=["mask"], seed=5)
    first = [a(batch) for _ in range(3)]
    second = [b(batch) for _ in range(3)]
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    assert not torch.equal(first[0]["image"], first[1]["image"])  # the stream advances per call
    other = BatchAugment(2, label_keys=["mask"], seed=6)(batch)
    assert not torch.equal(other["image"], first[0]["image"])

    state = a.state_dict()
    assert state == {"seed": 5, "calls": 3}
    expected = a(batch)
    resumed = BatchAugment(2, label_keys=["mask"], seed=0)
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))
    got = resumed(batch)
    assert torch.equal(got["image"], expected["image"]) and torch.equal(got["mask"], expected["mask"])


def _saved(state: dict) -> object:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_3d_shapes_and_metatensor_inputs() -> None:
    from monai.data import MetaTensor

    image = MetaTensor(torch.rand(2, 1, 12, 14, 10))
    mask = _squares(2, (12, 14, 10)).to(torch.uint8)
    out = BatchAugment(3, aug_prob=1.0, label_keys=["mask"])({"image": image, "mask": mask})
    assert out["image"].shape == (2, 1, 12, 14, 10) and type(out["image"]) is torch.Tensor
    assert out["mask"].dtype == torch.uint8 and set(out["mask"].unique().tolist()) <= {0, 1}


def test_rejects_bad_arguments_and_shapes() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        BatchAugment(4)
    with pytest.raises(ValueError, match="flip_axes"):
        BatchAugment(2, flip_axes=[2])
    with pytest.raises(ValueError, match="aug_prob"):
        BatchAugment(2, aug_prob=1.5)
    with pytest.raises(ValueError, match="gamma"):
        BatchAugment(2, gamma=(1.2, 0.8))
    with pytest.raises(KeyError, match="mask"):
        BatchAugment(2, label_keys=["mask"])({"image": torch.rand(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="expected"):
        BatchAugment(3)({"image": torch.rand(2, 1, 8, 8)})


def test_prepare_batch_augments_inputs_and_dense_targets_only() -> None:
    tasks = [Task(name="lesion", kind="segmentation", classes=["bg", "lesion"]), Task(name="malignant", kind="binary")]
    mask = _squares(8, (24, 24))
    batch = {
        "image": mask.clone(),
        "lesion": mask.clone(),
        "lesion_present": torch.tensor([True] * 7 + [False]),
        "malignant": torch.ones(8, 1),
        "malignant_present": torch.ones(8, dtype=torch.bool),
    }
    plain_inputs, plain_targets = MultiTaskPrepareBatch(tasks)(batch, torch.device("cpu"))
    augment = BatchAugment(2, aug_prob=0.0, flip_prob=1.0, seed=0)  # every sample flipped on both axes
    inputs, targets = MultiTaskPrepareBatch(tasks, augment=augment)(batch, torch.device("cpu"))
    assert torch.equal(inputs, plain_inputs.flip(2, 3))
    assert torch.equal(targets["lesion"], plain_targets["lesion"].flip(2, 3))
    assert torch.equal(targets["malignant"], plain_targets["malignant"])
    assert targets["lesion_present"].tolist() == plain_targets["lesion_present"].tolist()
    assert augment.state_dict()["calls"] == 1


def test_prepare_batch_augments_every_view_of_a_multi_view_input_alike() -> None:
    tasks = [Task(name="abnormal", kind="binary")]
    views = {"axial": torch.rand(4, 1, 8, 10), "coronal": torch.rand(4, 1, 8, 10)}
    batch = {**views, "abnormal": torch.ones(4, 1), "abnormal_present": torch.ones(4, dtype=torch.bool)}
    augment = BatchAugment(2, flip_axes=[1], flip_prob=1.0, aug_prob=0.0)
    inputs, _ = MultiTaskPrepareBatch(tasks, input_keys=list(views), augment=augment)(batch, torch.device("cpu"))
    assert set(inputs) == set(views)
    for key, view in views.items():
        assert torch.equal(inputs[key], view.flip(3))
