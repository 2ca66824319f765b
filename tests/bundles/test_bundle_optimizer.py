"""The optimizer a bundle builds keeps the network's own parameter groups (issue 19 item 6).

Why through the bundle: the bug was in the config line, not in ``CrossStitchNet.param_groups``:
the bundles handed ``@network.parameters()`` to the optimizer, so ``--sharing cross_stitch`` trained
the mixing weights at the base learning rate with weight decay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medmtl.bundle_layers import config_layers
from medmtl.data.demo import generate_demo2d
from medmtl.networks import CrossStitchNet

REPO = Path(__file__).resolve().parents[2]
TINY_UNET = {"backbone_presets#unet#features": [4, 4, 8, 8, 16, 4]}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "demo2d"
    generate_demo2d(root, num_cases=12, seed=0)
    return root


def _optimizer(bundle: str, data: Path, work: Path, **overrides: object) -> tuple[torch.optim.Optimizer, ConfigParser]:
    """The bundle's ``optimizer`` built from its training config layers on the demo data (nothing trained)."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers(bundle, "train")])
    parser.update(
        {
            "data_spec": str(REPO / "data_specs" / "demo.yaml"),
            "dataset_dir": str(data),
            "output_dir": str(work / "run"),
            "device": "$torch.device('cpu')",
            **overrides,
        }
    )
    parser.get_parsed_content("imports")  # the config's own `$import` lines, as `monai.bundle run` does
    return parser.get_parsed_content("optimizer"), parser


def _covers_each_parameter_once(optimizer: torch.optim.Optimizer, *modules: torch.nn.Module) -> None:
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for m in modules for p in m.parameters() if p.requires_grad}


def test_cross_stitch_units_get_their_own_learning_rate_and_no_decay(demo_data, tmp_path) -> None:
    optimizer, parser = _optimizer("ultrasound_mtl", demo_data, tmp_path, sharing="cross_stitch", **TINY_UNET)
    network, loss, lr, decay = (
        parser.get_parsed_content(k) for k in ("network", "loss_function", "learning_rate", "weight_decay")
    )
    assert isinstance(network, CrossStitchNet)
    stitch_ids = {id(p) for p in network.cross_stitch_parameters()}
    (stitches,) = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == stitch_ids]
    assert stitches["lr"] == pytest.approx(100 * lr) and stitches["weight_decay"] == 0.0
    loss_ids = {id(p) for p in loss.parameters()}
    columns = [g for g in optimizer.param_groups if g is not stitches and not {id(p) for p in g["params"]} & loss_ids]
    assert columns and all(g["lr"] == lr and g["weight_decay"] == decay for g in columns)
    _covers_each_parameter_once(optimizer, network, loss)


@pytest.mark.parametrize(("bundle", "overrides"), [("ultrasound_mtl", TINY_UNET), ("demo", {})])
def test_plain_network_keeps_the_base_settings(bundle, overrides, demo_data, tmp_path) -> None:
    optimizer, parser = _optimizer(bundle, demo_data, tmp_path, **overrides)
    network, loss, lr, decay = (
        parser.get_parsed_content(k) for k in ("network", "loss_function", "learning_rate", "weight_decay")
    )
    net_ids, loss_ids = {id(p) for p in network.parameters()}, {id(p) for p in loss.parameters()}
    (net_group,) = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == net_ids]
    assert net_group["lr"] == lr and net_group["weight_decay"] == decay
    (loss_group,) = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == loss_ids]  # uncertainty
    assert loss_group["lr"] == lr and loss_group["weight_decay"] == 0.0
    _covers_each_parameter_once(optimizer, network, loss)
