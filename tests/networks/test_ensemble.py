"""FoldEnsemble: the logits it returns give back the members' averaged probabilities; checkpoints merge by name."""

from __future__ import annotations

import torch

from medmtl.data.tasks import Task, TaskKind
from medmtl.experiments.cross_validation import write_ensemble_checkpoint
from medmtl.networks import FoldEnsemble, MultiTaskNet, ensemble_state_dict

TASKS = [
    Task(name="lesion", kind=TaskKind.SEGMENTATION, classes=("background", "lesion")),
    Task(name="malignant", kind=TaskKind.BINARY),
    Task(name="grade", kind=TaskKind.MULTICLASS, classes=("a", "b", "c")),
]


def _net(seed: int) -> MultiTaskNet:
    torch.manual_seed(seed)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "features": (4, 4, 8, 8, 16, 4)}
    return MultiTaskNet("unet", TASKS, backbone_kwargs=kwargs).eval()


def test_ensemble_logits_are_the_averaged_probabilities() -> None:
    members = [_net(0), _net(1)]
    ensemble = FoldEnsemble(members, TASKS).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [m(x) for m in members]
        got = ensemble(x)
    for name in ("lesion", "grade"):
        expected = (torch.softmax(outs[0][name], 1) + torch.softmax(outs[1][name], 1)) / 2
        torch.testing.assert_close(torch.softmax(got[name], 1), expected, atol=1e-6, rtol=1e-5)
    expected = (torch.sigmoid(outs[0]["malignant"]) + torch.sigmoid(outs[1]["malignant"])) / 2
    torch.testing.assert_close(torch.sigmoid(got["malignant"]), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(outs[0]["malignant"], outs[1]["malignant"])


def test_checkpoints_load_into_a_replicated_ensemble(tmp_path) -> None:
    paths = []
    for seed in (0, 1, 2):
        path = tmp_path / f"fold_{seed}.pt"
        torch.save({"network": _net(seed).state_dict(), "epoch": 3}, path)
        paths.append(path)
    ensemble = FoldEnsemble.replicate(_net(9), TASKS, 3)
    ensemble.load_state_dict(
        torch.load(write_ensemble_checkpoint(paths, tmp_path / "e.pt"), weights_only=True)["network"]
    )
    for seed, member in enumerate(ensemble.members):
        for name, value in _net(seed).state_dict().items():
            torch.testing.assert_close(member.state_dict()[name], value)
    assert set(ensemble_state_dict(paths[:1])) == {f"members.0.{k}" for k in _net(0).state_dict()}


def test_members_kept_for_their_spread() -> None:
    members = [_net(0), _net(1), _net(2)]
    ensemble = FoldEnsemble(members, TASKS, return_members=True).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = [m(x) for m in members]
        got = ensemble(x)
    assert set(got["fold_members"]) == {"malignant", "grade"}  # image-level tasks only
    for name in ("malignant", "grade"):
        torch.testing.assert_close(got["fold_members"][name], torch.stack([o[name] for o in outs], dim=1))
    assert "fold_members" not in FoldEnsemble(members, TASKS)(x)
