"""CPUAutocastNetwork: the bundles' ``amp`` on a CPU, as bfloat16 autocast with float32 weights and outputs."""

from __future__ import annotations

import pytest
import torch

from medmtl.data import Task
from medmtl.engines import CPUAutocastNetwork, cpu_autocast_network, cuda_amp, unwrap
from medmtl.losses import MultiTaskLoss
from medmtl.networks import build_multitask_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
]


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    return build_multitask_network(sharing="hard", backbone="unet", tasks=TASKS, backbone_kwargs=kwargs)


def _batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = {
        "lesion": (x > 0.5).float(),
        "lesion_present": torch.ones(4, dtype=torch.bool),
        "malignant": torch.tensor([[1.0], [0.0], [1.0], [0.0]]),
        "malignant_present": torch.ones(4, dtype=torch.bool),
    }
    return x, targets


def test_the_convolutions_run_in_bfloat16_and_the_logits_come_back_float32_close_to_float32() -> None:
    network = _network().eval()
    conv_dtypes: list[torch.dtype] = []
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, out: conv_dtypes.append(out.dtype))
    x, _ = _batch()
    with torch.no_grad():
        expected = network(x)
        conv_dtypes.clear()
        got = CPUAutocastNetwork(network)(x)
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert set(got) == set(expected) == {"lesion", "malignant"}
    for name, logits in got.items():
        assert logits.dtype == torch.float32 and logits.shape == expected[name].shape
        torch.testing.assert_close(logits, expected[name], atol=0.05, rtol=0.05)  # bfloat16: 8 bits of mantissa
        assert not torch.equal(logits, expected[name])  # computed in bfloat16, not float32 with a cast


def test_training_through_the_wrapper_keeps_float32_weights_and_lowers_the_loss() -> None:
    network = _network()
    engine_network = CPUAutocastNetwork(network)
    loss_function = MultiTaskLoss(TASKS)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    x, targets = _batch()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_function(engine_network(x), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in network.parameters())
    assert losses[-1] < 0.7 * losses[0]
    assert unwrap(engine_network) is network
    assert [p for p in engine_network.parameters()] == [p for p in network.parameters()]  # registered once
    engine_network.eval()
    assert not network.training


def test_the_wrapper_is_used_on_the_cpu_with_amp_only_and_the_engines_get_cuda_amp_alone() -> None:
    network = _network()
    assert isinstance(cpu_autocast_network(network, torch.device("cpu"), True), CPUAutocastNetwork)
    assert cpu_autocast_network(network, "cpu", False) is network
    assert cpu_autocast_network(network, "cuda", True) is network  # MONAI's engines autocast on CUDA
    assert cuda_amp(True, "cuda:0") and not cuda_amp(True, "cpu") and not cuda_amp(False, "cuda")
