"""Mask-guided pooling: classification heads that also pool the decoder features under a predicted mask."""

from __future__ import annotations

import pytest
import torch

from medmtl.losses import MultiTaskLoss
from medmtl.networks import ClassificationHead, MultiTaskNet, build_multitask_network
from medmtl.networks.heads import MaskPooledClassificationHead

from .conftest import make_targets

RESUNET = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}
SHAPES = {2: (33, 37), 3: (17, 19, 21)}


def _net(tasks, dims: int = 2, **kwargs) -> MultiTaskNet:
    torch.manual_seed(0)
    backbone_kwargs = {"spatial_dims": dims, "in_channels": 1, **RESUNET}
    return MultiTaskNet("resunet", tasks, backbone_kwargs=backbone_kwargs, mask_pooling="lesion", **kwargs)


@pytest.mark.parametrize("dims", [2, 3])
def test_output_contract_is_unchanged(tasks3, dims):
    net = _net(tasks3, dims).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *SHAPES[dims]))
    assert list(out) == ["lesion", "malignant", "diagnosis"]
    assert out["lesion"].shape == (2, 2, *SHAPES[dims])
    assert out["malignant"].shape == (2, 1) and out["diagnosis"].shape == (2, 3)
    for name in ("malignant", "diagnosis"):
        head = net.heads[name]
        assert isinstance(head, MaskPooledClassificationHead)
        # avg + max of the 16-channel bottleneck, the 8 decoder channels (resunet: 2 x 4 at 1/2 size) under
        # the mask, area and peak
        assert head.fc.in_features == 2 * 16 + net.backbone.dense_channels + 2 == 2 * 16 + 8 + 2
    plain = MultiTaskNet("resunet", tasks3, backbone_kwargs={"spatial_dims": dims, **RESUNET})
    assert isinstance(plain.heads["diagnosis"], ClassificationHead)


def test_head_features_follow_the_mask():
    head = MaskPooledClassificationHead(bottleneck_channels=3, dense_channels=2, out_channels=1, pooling="avg")
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
        head.fc.weight[0, 3] = 1.0  # read the first decoder channel under the mask
    dense = torch.zeros(2, 2, 4, 4)
    dense[:, 0, :2] = 10.0  # top half of channel 0 is 10, bottom half 0
    bottleneck = torch.randn(2, 3, 2, 2)
    top = torch.zeros(1, 1, 4, 4)
    top[..., :2, :] = 1.0
    masks = torch.cat([top, 1.0 - top])  # sample 0 marks the top half, sample 1 the bottom half
    logits = head(bottleneck, dense, masks)
    assert logits[0, 0].item() == pytest.approx(10.0 * 8 / 9)  # sum(p * f) / (sum(p) + 1) with 8 pixels
    assert logits[1, 0].item() == pytest.approx(0.0)

    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[0, 5] = 1.0  # the soft area
        area = head(bottleneck, dense, masks * 0.5)
        head.fc.weight[0, 5], head.fc.weight[0, 6] = 0.0, 1.0  # the peak probability
        peak = head(bottleneck, dense, masks * 0.5)
        empty = head(bottleneck, torch.randn(2, 2, 4, 4), torch.zeros(2, 1, 4, 4))
    assert area[:, 0].tolist() == pytest.approx([0.25, 0.25])
    assert peak[:, 0].tolist() == pytest.approx([0.5, 0.5])
    assert torch.isfinite(empty).all() and empty.abs().max().item() == 0.0  # an empty mask pools ~0, never NaN


@pytest.mark.parametrize("dims", [2, 3])
def test_coarse_features_pool_as_if_repeated_to_full_resolution(dims):
    """dense_stride 2 (resunet): each feature cell weighs the mask's sum over its voxels; padded cells are left out."""
    torch.manual_seed(0)
    coarse = MaskPooledClassificationHead(3, 2, 1, pooling="avg", dense_stride=2, spatial_dims=dims)
    fine = MaskPooledClassificationHead(3, 2, 1, pooling="avg")
    fine.load_state_dict(coarse.state_dict())
    size = (5, 7, 3)[:dims]  # odd: the last cells are half outside the image
    cells = tuple((s + 1) // 2 + 1 for s in size)  # one more cell of padding, as the backbone's padded input gives
    dense = torch.randn(2, 2, *cells)
    mask = torch.rand(2, 1, *size)
    bottleneck = torch.randn(2, 3, *([1] * dims))
    repeated = dense
    for d in range(dims):
        repeated = repeated.repeat_interleave(2, dim=2 + d)
    repeated = repeated[(slice(None), slice(None), *(slice(0, s) for s in size))]
    torch.testing.assert_close(coarse(bottleneck, dense, mask), fine(bottleneck, repeated, mask))


@pytest.mark.parametrize("detach", [True, False])
def test_detach_mask_keeps_classification_gradients_out_of_the_segmentation_head(tasks3, detach):
    net = _net(tasks3, detach_mask=detach)
    out = net(torch.randn(2, 1, *SHAPES[2]))
    out["diagnosis"].square().sum().backward()
    seg_grads = [p.grad for p in net.heads["lesion"].parameters()]  # resunet: MONAI UNet's top up-layer
    if detach:
        assert all(g is None or g.abs().max().item() == 0.0 for g in seg_grads)
    else:
        assert any(g is not None and g.abs().max().item() > 0.0 for g in seg_grads)
    decoder_grads = [p.grad for m in net.backbone.decoder_modules() for p in m.parameters()]
    assert any(g is not None and g.abs().max().item() > 0 for g in decoder_grads)  # the decoder is shared


def test_parameter_partition_still_covers_every_parameter_once(tasks3):
    net = _net(tasks3)
    shared = [id(p) for p in net.shared_parameters()]
    specific = [id(p) for p in net.task_specific_parameters()]
    assert len(set(shared)) == len(shared) and not set(shared) & set(specific)
    assert set(shared) | set(specific) == {id(p) for p in net.parameters()}
    head = {id(p) for p in net.task_specific_parameters("diagnosis")}
    assert head == {id(p) for p in net.heads["diagnosis"].parameters()}


def test_bad_mask_pooling_names_the_choices(tasks3):
    with pytest.raises(ValueError, match=r"mask_pooling='tumour'.*\['lesion'\]"):
        MultiTaskNet("resunet", tasks3, backbone_kwargs={"spatial_dims": 2, **RESUNET}, mask_pooling="tumour")
    with pytest.raises(ValueError, match="must name a segmentation task"):
        MultiTaskNet("resunet", tasks3, backbone_kwargs={"spatial_dims": 2, **RESUNET}, mask_pooling="diagnosis")
    with pytest.raises(ValueError, match="sharing='hard'"):
        build_multitask_network(
            "saliency_bridge", "resunet", tasks3, {"spatial_dims": 2, **RESUNET}, mask_pooling="lesion"
        )
    # a bundle passes mask_pooling: null for every sharing scheme
    net = build_multitask_network("cross_stitch", "resunet", tasks3, {"spatial_dims": 2, **RESUNET}, mask_pooling=None)
    assert set(net(torch.randn(1, 1, 16, 16))) == {"lesion", "malignant", "diagnosis"}


def test_trains_with_multitask_loss(tasks3):
    net = _net(tasks3)
    loss_fn = MultiTaskLoss(tasks3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(4, 1, *SHAPES[2])
    targets = make_targets(tasks3, 4, SHAPES[2])
    targets["lesion"] = targets["lesion"].unsqueeze(1)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn(net(x), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]


def test_torchscript_gives_the_same_outputs(tasks3):
    net = _net(tasks3).eval()
    x = torch.randn(2, 1, *SHAPES[2])
    scripted = torch.jit.script(net)
    with torch.no_grad():
        eager, script = net(x), scripted(x)
    for name in eager:
        torch.testing.assert_close(script[name], eager[name])
