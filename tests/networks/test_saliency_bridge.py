"""Saliency bridge: output shapes, no gradient leak, eval/no_grad inference, identity start, training."""

from __future__ import annotations

import pytest
import torch

from medmtl.networks import MeshNetBackbone, MultiTaskNet, SaliencyBridgeNet

UNET2D = {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}


def make_net(tasks, **kwargs):
    return SaliencyBridgeNet("unet", tasks, saliency_task="diagnosis", backbone_kwargs=UNET2D, **kwargs)


def test_outputs_and_saliency_shape(tasks3):
    net = make_net(tasks3, return_saliency=True)
    x = torch.randn(2, 1, 33, 37)
    out = net(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "lesion": (2, 2, 33, 37),
        "malignant": (2, 1),
        "diagnosis": (2, 3),
        "saliency": (2, 1, 33, 37),
    }
    saliency = out["saliency"]
    assert not saliency.requires_grad and saliency.min() >= 0
    torch.testing.assert_close(saliency.flatten(1).amax(1), torch.ones(2))  # scaled to [0, 1] per sample
    assert "saliency" not in make_net(tasks3)(x)


def test_forward_leaves_no_gradient_on_the_model(tasks3):
    net = make_net(tasks3, return_saliency=True).train()
    out = net(torch.randn(2, 1, 33, 37))
    assert all(p.grad is None for p in net.parameters())
    sum(v.float().mean() for k, v in out.items() if k != "saliency").backward()  # the graph is still usable
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net(torch.randn(2, 1, 33, 37))  # a second forward must not accumulate into existing gradients
    assert all(torch.equal(p.grad, grads[n]) for n, p in net.named_parameters())


def test_eval_and_no_grad_inference(tasks3):
    net = make_net(tasks3, return_saliency=True).eval()
    x = torch.randn(1, 1, 33, 37)
    with torch.no_grad():
        out = net(x)
        maps = net.saliency(x)
    assert torch.is_grad_enabled()  # the local switch is undone
    assert not any(v.requires_grad for v in out.values())
    assert all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(maps, out["saliency"])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        net(x)


def test_bridge_starts_as_the_plain_network(tasks3):
    net = make_net(tasks3).eval()
    plain = MultiTaskNet(net.backbone, tasks3).eval()
    plain.heads.load_state_dict(net.heads.state_dict())
    x = torch.randn(2, 1, 33, 37)
    with torch.no_grad():
        a, b = net(x), plain(x)
    for k in b:
        torch.testing.assert_close(a[k], b[k])
    assert net.bridge.in_channels == 16 + 1 + 1 and net.bridge.out_channels == 16


def test_meshnet_3d_and_training_reduces_losses(tasks3, trainer, targets_for):
    net = SaliencyBridgeNet(MeshNetBackbone(spatial_dims=3, channels=4, dilations="original"), tasks3[:2])
    x = torch.randn(2, 1, 9, 11, 13)
    first, last = trainer(net, x, targets_for(tasks3[:2], 2, (9, 11, 13)), tasks3[:2], steps=6)
    assert all(last[t] < first[t] for t in first), (first, last)
    assert net.saliency_task == "malignant"  # the only image-level task


def test_configuration_errors(tasks3):
    with pytest.raises(ValueError, match="several image-level tasks"):
        SaliencyBridgeNet("unet", tasks3, backbone_kwargs=UNET2D)
    with pytest.raises(ValueError, match="not an image-level task"):
        SaliencyBridgeNet("unet", tasks3, saliency_task="lesion", backbone_kwargs=UNET2D)
    with pytest.raises(ValueError, match="at least one segmentation task"):
        SaliencyBridgeNet("unet", tasks3[1:], saliency_task="malignant", backbone_kwargs=UNET2D)
    with pytest.raises(ValueError, match="also a task name"):
        make_net(tasks3, return_saliency=True, saliency_key="lesion")
