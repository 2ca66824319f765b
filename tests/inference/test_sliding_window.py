"""Multi-task sliding-window inference against MONAI's seg-only stitching and hand-computed class aggregation."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medmtl.inference import MemoryBudgetError, MultiTaskSlidingWindowInferer
from medmtl.networks import MultiTaskNet

TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "grade", "kind": "multiclass", "classes": ["low", "mid", "high"]},
    {"name": "abnormal", "kind": "binary"},
]


class WindowNet(torch.nn.Module):
    """Seg = a conv of the window; class logits = the window's mean intensity (so windows differ)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3, 4))
        return {
            "lesion": self.conv(x),
            "grade": torch.stack([mean, 2 * mean, -mean], 1),
            "abnormal": mean[:, None],
        }


@pytest.fixture
def volume() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 20, 24, 18)
    x[1, :, :10] += 3.0  # one half much brighter: window scores differ a lot
    return x


def test_segmentation_equals_monai_seg_only(volume: torch.Tensor) -> None:
    net = WindowNet().eval()
    inferer = MultiTaskSlidingWindowInferer(TASKS, roi_size=(12, 12, 12), sw_batch_size=3, overlap=0.5)
    with torch.no_grad():
        out = inferer(volume, net)
        ref = sliding_window_inference(
            volume, (12, 12, 12), 3, lambda w: net(w)["lesion"], overlap=0.5, mode="gaussian"
        )
    assert out["lesion"].shape == (2, 2, 20, 24, 18)
    torch.testing.assert_close(torch.as_tensor(out["lesion"]), torch.as_tensor(ref))
    assert out["grade"].shape == (2, 3) and out["abnormal"].shape == (2, 1)
    assert inferer.last_pass == "sliding"


@pytest.mark.parametrize("aggregation", ["mean", "max", "weighted_mean"])
def test_class_aggregation_matches_windows(volume: torch.Tensor, aggregation: str) -> None:
    net = WindowNet().eval()
    roi = (12, 12, 12)
    windows: list[tuple[int, torch.Tensor]] = []

    def spy(w: torch.Tensor, coords: list) -> dict:
        for i, c in enumerate(coords):
            windows.append((int(c[0].start), w[i : i + 1].mean()))
        return {"x": w[:, :1]}

    with torch.no_grad():
        sliding_window_inference(volume, roi, 2, spy, overlap=0.5, with_coord=True)
        out = MultiTaskSlidingWindowInferer(TASKS, roi, sw_batch_size=2, overlap=0.5, class_aggregation=aggregation)(
            volume, net
        )
    for case in range(2):
        means = torch.stack([m for b, m in windows if b == case])
        # no padding here: every window lies inside the image, so weighted_mean == mean
        expected = means.max() if aggregation == "max" else means.mean()
        torch.testing.assert_close(out["abnormal"][case, 0], expected)
        torch.testing.assert_close(out["grade"][case, 1], 2 * expected)
    assert out["abnormal"][1, 0] > out["abnormal"][0, 0] + 0.5


def test_padded_windows_weigh_less() -> None:
    """An image smaller than the window: weighted mean ignores the padding, plain mean would too (one window)."""
    x = torch.ones(1, 1, 8, 12, 12)
    net = WindowNet().eval()
    with torch.no_grad():
        out = MultiTaskSlidingWindowInferer(TASKS, (12, 12, 12), overlap=0.25)(x, net)
    assert out["lesion"].shape == (1, 2, 8, 12, 12)
    # the single window is 8/12 image: mean intensity 8/12
    torch.testing.assert_close(out["abnormal"][0, 0], torch.tensor(8 / 12))


def test_weighted_mean_discounts_padding_heavy_windows() -> None:
    """Windows that overlap the padding count less than windows inside the image."""
    x = torch.zeros(1, 1, 4, 4, 20)
    x[..., 10:] = 1.0
    net = WindowNet().eval()
    with torch.no_grad():
        weighted = MultiTaskSlidingWindowInferer(TASKS, (8, 8, 8), overlap=0.5, mode="constant")(x, net)
        plain = MultiTaskSlidingWindowInferer(TASKS, (8, 8, 8), overlap=0.5, mode="constant", class_aggregation="mean")(
            x, net
        )
    # all windows are equally padded along the small axes, so both agree here
    torch.testing.assert_close(weighted["abnormal"], plain["abnormal"])


def test_multitasknet_whole_volume_equals_single_forward() -> None:
    torch.manual_seed(0)
    net = MultiTaskNet(
        "unet", TASKS, backbone_kwargs={"spatial_dims": 3, "in_channels": 1, "features": (4, 4, 8, 8, 16, 4)}
    ).eval()
    x = torch.rand(1, 1, 36, 34, 40)
    inferer = MultiTaskSlidingWindowInferer(TASKS, (32, 32, 32), whole_volume_budget_mb=512)
    with torch.no_grad():
        out = inferer(x, net)
        ref = net(x)
    assert inferer.last_pass == "whole"
    for task in ("lesion", "grade", "abnormal"):
        torch.testing.assert_close(out[task], ref[task])
    tiny_budget = MultiTaskSlidingWindowInferer(TASKS, (32, 32, 32), whole_volume_budget_mb=0.01)
    with torch.no_grad():
        slid = tiny_budget(x, net)
    assert tiny_budget.last_pass == "sliding"
    assert slid["lesion"].shape == ref["lesion"].shape


def test_memory_budget_refuses_with_a_clear_message() -> None:
    net = WindowNet().eval()
    inferer = MultiTaskSlidingWindowInferer(TASKS, (12, 12, 12), sw_batch_size=4, max_memory_mb=0.05)
    with pytest.raises(MemoryBudgetError, match=r"sw_batch_size=4.*max_memory_mb=0.05.*Fix"):
        inferer(torch.rand(1, 1, 30, 30, 30), net)
    # a generous budget runs
    MultiTaskSlidingWindowInferer(TASKS, (12, 12, 12), max_memory_mb=500)(torch.rand(1, 1, 30, 30, 30), net)


def test_stitching_buffer_on_another_device() -> None:
    net = WindowNet().eval()
    with torch.no_grad():
        out = MultiTaskSlidingWindowInferer(TASKS, (12, 12, 12), device="cpu", sw_device="cpu")(
            torch.rand(1, 1, 14, 14, 14), net
        )
    assert out["lesion"].device.type == "cpu"


def test_rejects_dict_inputs_and_bad_outputs() -> None:
    inferer = MultiTaskSlidingWindowInferer(TASKS, (8, 8, 8))
    with pytest.raises(TypeError, match="SimpleInferer"):
        inferer({"axial": torch.rand(1, 1, 8, 8, 8)}, WindowNet())
    with pytest.raises(KeyError, match="lacks tasks"):
        inferer(torch.rand(1, 1, 8, 8, 8), lambda w: {"lesion": w.repeat(1, 2, 1, 1, 1)})
    with pytest.raises(ValueError, match="class_aggregation"):
        MultiTaskSlidingWindowInferer(TASKS, 8, class_aggregation="median")
