"""CompiledNetwork (opt-in torch.compile) and the cudnn.benchmark decision (issue 23 item 5)."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer

from medmtl.data import Task
from medmtl.engines import (
    CompiledNetwork,
    MultiTaskPrepareBatch,
    TrainingMemoryGuard,
    compiled_network,
    cudnn_benchmark_choice,
    set_cudnn_benchmark,
    unwrap,
)
from medmtl.losses import MultiTaskLoss
from medmtl.networks import build_multitask_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
]
EAGER = {"backend": "eager"}  # dynamo's capture without code generation: what the tests can afford on 2 cores


def _network() -> torch.nn.Module:
    """A small MeshNet: dynamo traces it in about a second (the bundle test compiles the U-Net)."""
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "channels": 4}
    return build_multitask_network(sharing="hard", backbone="meshnet", tasks=TASKS, backbone_kwargs=kwargs)


def test_compiled_call_on_metatensor_inputs_gives_the_eager_outputs_and_keeps_the_network_keys() -> None:
    network = _network().eval()
    keys = list(network.state_dict())
    engine_network = compiled_network(network, True, EAGER)
    x = MetaTensor(torch.randn(2, 1, 33, 37, generator=torch.Generator().manual_seed(1)), meta={"spacing": [1, 1]})
    with torch.no_grad():
        got, expected = engine_network(x), network(x.as_tensor())
    assert set(got) == {"lesion", "malignant"}
    for name in got:
        assert type(got[name]) is torch.Tensor and torch.equal(got[name], expected[name])
    assert isinstance(x, MetaTensor) and x.meta["spacing"] == [1, 1]  # the caller's batch keeps its metadata
    assert unwrap(engine_network) is network and list(network.state_dict()) == keys
    assert all(k.startswith("module.") and "_orig_mod" not in k for k in engine_network.state_dict())
    assert [p for p in engine_network.parameters()] == [p for p in network.parameters()]  # registered once


def test_a_step_through_the_compiled_call_trains_the_shared_parameters_and_follows_train_eval() -> None:
    network, reference = _network(), _network()
    engine_network = compiled_network(network, True, EAGER)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = {
        "lesion": (x > 0).float(),
        "lesion_present": torch.ones(2, dtype=torch.bool),
        "malignant": torch.tensor([[1.0], [0.0]]),
        "malignant_present": torch.ones(2, dtype=torch.bool),
    }
    for net, forward in ((network, engine_network), (reference, reference)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        MultiTaskLoss(TASKS)(forward(x), targets).backward()
        optimizer.step()
    for (name, got), expected in zip(network.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, expected, msg=name)
    engine_network.eval()
    assert not network.training
    engine_network.train()
    assert network.training


def test_compile_off_is_the_network_itself_and_bad_kwargs_name_the_key() -> None:
    network = _network()
    assert compiled_network(network, False, {"backend": "eager"}) is network
    assert isinstance(compiled_network(network, True), CompiledNetwork)
    with pytest.raises(TypeError, match="compile_kwargs must be a dict"):
        compiled_network(network, True, "eager")


@pytest.mark.parametrize(
    ("setting", "device", "dims", "fixed", "deterministic", "expected"),
    [
        ("auto", "cuda", 3, True, False, True),  # fixed 3D patches on CUDA: on
        ("auto", "cuda:1", 3, True, False, True),
        ("auto", "cpu", 3, True, False, False),  # no cuDNN
        ("auto", "cuda", 2, True, False, False),  # 2D: left off by auto
        ("auto", "cuda", 3, False, False, False),  # whole volumes of varying size
        ("auto", "cuda", 3, True, True, False),  # deterministic runs asked for
        (True, "cuda", 2, False, True, True),  # explicit: honoured on CUDA
        ("true", "cuda", 2, False, False, True),  # as a command-line override arrives
        (True, "cpu", 3, True, False, False),
        (False, "cuda", 3, True, False, False),
        ("False", "cuda", 3, True, False, False),
    ],
)
def test_cudnn_benchmark_choice(setting, device, dims, fixed, deterministic, expected) -> None:
    enabled, why = cudnn_benchmark_choice(setting, device, dims, fixed, deterministic)
    assert enabled is expected and why.startswith("on" if expected else "off")


@pytest.mark.parametrize("setting", ["fast", 1, None])
def test_cudnn_benchmark_rejects_unknown_settings(setting) -> None:
    with pytest.raises(ValueError, match="cudnn_benchmark must be one of 'auto', true, false"):
        cudnn_benchmark_choice(setting, "cuda", 3, True, False)


def test_set_cudnn_benchmark_on_cpu_changes_nothing_and_logs_the_choice_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with caplog.at_level(logging.INFO, logger="medmtl.engines.acceleration"):
        assert set_cudnn_benchmark("auto", torch.device("cpu"), 3, fixed_shape=True) is False
    assert torch.backends.cudnn.benchmark is False
    assert [r.getMessage() for r in caplog.records] == ["cudnn.benchmark off: device cpu has no cuDNN"]


def test_memory_guard_estimates_on_the_plain_network_without_compiling() -> None:
    """The guard's eval forward with hooks runs on ``unwrap(engine.network)``: nothing is compiled for it."""
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    batch = {
        "image": torch.randn(2, 1, 32, 32),
        "lesion": torch.zeros(2, 1, 32, 32),
        "lesion_present": torch.ones(2),
        "malignant": torch.zeros(2, 1),
        "malignant_present": torch.ones(2),
    }
    estimates = []
    for compile_on in (False, True):
        network = _network()
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[batch],
            network=compiled_network(network, compile_on, {"backend": counting_backend}),
            optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
            loss_function=MultiTaskLoss(TASKS),
            prepare_batch=MultiTaskPrepareBatch(TASKS),
        )
        trainer.state.batch = batch
        guard = TrainingMemoryGuard(max_bytes="1GiB")
        guard.check(trainer)
        estimates.append(guard.estimate)
    assert estimates[0] == estimates[1] > 0 and graphs == []
