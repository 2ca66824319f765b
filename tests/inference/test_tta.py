"""MirrorTTAInferer: masks flipped back before the mean, class logits averaged, 2**k passes."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer

from medmtl.inference import MirrorTTAInferer, mirror_combinations


class _CountingNet(torch.nn.Module):
    """Seg logits: a pointwise function of the input (flip-equivariant, so TTA must return it exactly);
    class logit: the sum over the first half of spatial axis 0 (not flip-invariant)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        half = x.shape[2] // 2
        return {"lesion": torch.cat([x, 2 * x], dim=1), "grade": x[:, :, :half].flatten(1).sum(1, keepdim=True)}


def test_combinations_are_all_subsets() -> None:
    assert mirror_combinations([]) == [()]
    assert mirror_combinations([1, 0, 1]) == [(), (0,), (1,), (0, 1)]
    assert len(mirror_combinations([0, 1, 2])) == 8


def test_2d_masks_unflipped_and_class_logits_averaged() -> None:
    x = torch.rand(2, 1, 6, 5, generator=torch.Generator().manual_seed(0))
    net = _CountingNet()
    out = MirrorTTAInferer(SimpleInferer(), mirror_axes=[0])(x, net)
    assert net.calls == 2
    torch.testing.assert_close(out["lesion"], torch.cat([x, 2 * x], dim=1))  # equivariant: exact
    first_half, second_half = x[:, :, :3].flatten(1).sum(1), x[:, :, 3:].flatten(1).sum(1)
    torch.testing.assert_close(out["grade"], ((first_half + second_half) / 2).unsqueeze(1))


def test_no_axes_is_one_plain_pass_and_3d_runs_eight() -> None:
    x = torch.rand(1, 1, 4, 4, 4)
    net = _CountingNet()
    plain = MirrorTTAInferer(mirror_axes=())(x, net)
    assert net.calls == 1
    torch.testing.assert_close(plain["grade"], net(x)["grade"])
    net.calls = 0
    out = MirrorTTAInferer(mirror_axes=[0, 1, 2])(x, net)
    assert net.calls == 8
    torch.testing.assert_close(out["lesion"][:, :1], x)
    torch.testing.assert_close(out["grade"], x.sum().reshape(1, 1) / 2)  # every half seen equally often


def test_multi_view_inputs_and_tuple_outputs() -> None:
    views = {"axial": torch.rand(1, 1, 4, 3), "coronal": torch.rand(1, 1, 4, 3)}

    def net(inputs):
        return inputs["axial"] * 3, inputs["coronal"][:, :, :2].sum().reshape(1, 1)

    mask, score = MirrorTTAInferer(mirror_axes=[0])(views, net)
    torch.testing.assert_close(mask, views["axial"] * 3)
    expected = (views["coronal"][:, :, :2].sum() + views["coronal"][:, :, 2:].sum()) / 2
    torch.testing.assert_close(score, expected.reshape(1, 1))


def test_bad_axes() -> None:
    with pytest.raises(ValueError, match="counted from 0"):
        MirrorTTAInferer(mirror_axes=[-1])
    with pytest.raises(ValueError, match="do not fit a 2D input"):
        MirrorTTAInferer(mirror_axes=[2])(torch.rand(1, 1, 4, 4), _CountingNet())


def test_kept_passes_are_each_mirror_images_image_level_logits() -> None:
    x = torch.rand(2, 1, 6, 5, generator=torch.Generator().manual_seed(1))
    out = MirrorTTAInferer(SimpleInferer(), mirror_axes=[0], keep_passes=True)(x, _CountingNet())
    first_half, second_half = x[:, :, :3].flatten(1).sum(1), x[:, :, 3:].flatten(1).sum(1)
    passes = out["tta_passes"]
    assert set(passes) == {"grade"}  # masks are not kept per pass
    torch.testing.assert_close(passes["grade"], torch.stack([first_half, second_half], dim=1).unsqueeze(2))
    torch.testing.assert_close(passes["grade"].mean(1), out["grade"])
    assert "tta_passes" not in MirrorTTAInferer(mirror_axes=(), keep_passes=True)(x, _CountingNet())  # TTA off
