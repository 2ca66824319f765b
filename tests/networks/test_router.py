"""ExpertRouter: each sample goes to the expert of its predicted group, batch order kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmtl.data import Task
from medmtl.networks import ExpertRouter


class FixedRouter(nn.Module):
    """Routes by the sample's first pixel value (an integer class index)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.tasks = [Task(name="body_part", kind="multiclass", classes=[f"part{i}" for i in range(num_classes)])]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        index = x[:, 0, 0, 0].long()
        return {"body_part": nn.functional.one_hot(index, self.num_classes).float() * 5.0}


class ConstantExpert(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batch_sizes.append(x.shape[0])
        return {"abnormal": torch.full((x.shape[0], 1), self.value), "grade": torch.full((x.shape[0], 2), -self.value)}


def test_expert_router_picks_the_expert_of_the_predicted_group() -> None:
    experts = {f"part{i}": ConstantExpert(float(10 * (i + 1))) for i in range(3)}
    router = ExpertRouter(FixedRouter(3), experts, router_task="body_part")
    routes = torch.tensor([2, 0, 2, 1, 0])
    x = torch.zeros(5, 1, 4, 4)
    x[:, 0, 0, 0] = routes.float()

    out = router(x)
    assert set(out) == {"body_part", "abnormal", "grade"}
    assert out["abnormal"][:, 0].tolist() == [10.0 * (r + 1) for r in routes.tolist()]  # batch order kept
    assert out["grade"].shape == (5, 2)
    assert [experts[f"part{i}"].batch_sizes for i in range(3)] == [[2], [1], [2]]  # only its own samples
    assert router.route(out["body_part"]).tolist() == routes.tolist()

    only_one = torch.zeros(2, 1, 4, 4)
    assert router(only_one)["abnormal"][:, 0].tolist() == [10.0, 10.0]


def test_expert_router_binary_list_and_checks() -> None:
    class BinaryRouter(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"side": x[:, :1, 0, 0]}

    router = ExpertRouter(BinaryRouter(), [ConstantExpert(1.0), ConstantExpert(2.0)], router_task="side")
    x = torch.tensor([-1.0, 3.0, -2.0]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    assert router(x)["abnormal"][:, 0].tolist() == [1.0, 2.0, 1.0]

    with pytest.raises(ValueError, match="one-to-one"):
        ExpertRouter(FixedRouter(3), {"part0": ConstantExpert(1.0), "part1": ConstantExpert(2.0)}, "body_part")
    with pytest.raises(ValueError, match="class order"):
        ExpertRouter(BinaryRouter(), {"left": ConstantExpert(1.0), "right": ConstantExpert(2.0)}, "side")
    with pytest.raises(KeyError, match="no 'organ'"):
        ExpertRouter(FixedRouter(2), [ConstantExpert(1.0), ConstantExpert(2.0)], "organ")(torch.zeros(1, 1, 2, 2))


class TinyNet(nn.Module):
    """A two-task network of one linear layer per task, with ``tasks`` as the bundle networks have."""

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__()
        self.tasks = tasks
        self.heads = nn.ModuleDict({t.name: nn.Linear(8, t.num_outputs) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = x.flatten(1)
        return {name: head(flat) for name, head in self.heads.items()}


def test_router_checkpoint_round_trip_gives_each_sample_its_experts_answer(tmp_path) -> None:
    from medmtl.engines.checkpoint_io import RUN_CONFIG_KEY
    from medmtl.experiments.experts import write_router_checkpoint

    tasks = [
        Task(name="abnormal", kind="binary"),
        Task(name="body_part", kind="multiclass", classes=["elbow", "hand", "wrist"]),
    ]
    torch.manual_seed(0)
    router, experts = TinyNet(tasks), [TinyNet(tasks) for _ in range(3)]  # each its own random weights
    paths = []
    for name, net in [("router", router), *((f"expert{k}", e) for k, e in enumerate(experts))]:
        paths.append(tmp_path / f"{name}.pt")
        torch.save({"network": net.state_dict(), RUN_CONFIG_KEY: {"owner": name}}, paths[-1])
    combined = write_router_checkpoint(paths[0], paths[1:], tmp_path / "router_all.pt")

    saved = torch.load(combined, weights_only=True)
    assert saved[RUN_CONFIG_KEY] == {"owner": "router"}  # evaluation reads the router's record
    loaded = ExpertRouter.replicate(TinyNet(tasks), "body_part")  # fresh weights, replaced by the checkpoint
    loaded.load_state_dict(saved["network"])  # strict: every router and expert weight, nothing else
    assert loaded.classes == ["elbow", "hand", "wrist"]

    x = torch.randn(32, 2, 2, 2)
    with torch.no_grad():
        out = loaded(x)
        routes = router(x)["body_part"].argmax(dim=1)
        assert set(routes.tolist()) == {0, 1, 2}  # every expert gets samples
        torch.testing.assert_close(out["body_part"], router(x)["body_part"])  # the group is the router's
        for k, expert in enumerate(experts):
            rows = routes == k
            torch.testing.assert_close(out["abnormal"][rows], expert(x[rows])["abnormal"])
            assert not torch.allclose(out["abnormal"][rows], router(x[rows])["abnormal"])

    with pytest.raises(FileNotFoundError, match="expert9.pt"):
        write_router_checkpoint(paths[0], [*paths[1:3], tmp_path / "expert9.pt"], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no task 'organ'"):
        ExpertRouter.replicate(TinyNet(tasks), "organ")


def test_expert_router_routes_dict_inputs() -> None:
    class ViewRouter(nn.Module):
        def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"side": x["axial"][:, :1, 0, 0]}

    class ViewExpert(ConstantExpert):
        def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            assert x["axial"].shape[0] == x["coronal"].shape[0]
            return super().forward(x["axial"])

    router = ExpertRouter(ViewRouter(), [ViewExpert(1.0), ViewExpert(2.0)], router_task="side")
    axial = torch.tensor([2.0, -1.0, 3.0]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    out = router({"axial": axial, "coronal": torch.zeros(3, 1, 2, 2)})
    assert out["abnormal"][:, 0].tolist() == [2.0, 1.0, 2.0]
