"""MultiTaskNet / MultiTaskClassifier: output contract, parameter partition, training, input checks."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from medmtl.data.tasks import Task
from medmtl.networks import (
    BasicUNetBackbone,
    ClassificationHead,
    MeshNet,
    MultiTaskClassifier,
    MultiTaskNet,
    ResNetBackbone,
    SegmentationHead,
)

GROUP2 = ("group", {"num_groups": 2})
TINY = {
    "unet": {"features": (4, 4, 8, 8, 16, 4)},
    "resunet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 2},
    "segresnet": {"init_filters": 4, "norm": GROUP2, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    "meshnet": {"channels": 4, "dilations": "original"},
}
SHAPES = {2: (33, 37), 3: (33, 35, 37)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_output_keys_and_shapes(name, dims, tasks3):
    net = MultiTaskNet(name, tasks3, backbone_kwargs={"spatial_dims": dims, "in_channels": 1, **TINY[name]}).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *SHAPES[dims]))
    assert list(out) == ["lesion", "malignant", "diagnosis"]
    assert out["lesion"].shape == (2, 2, *SHAPES[dims])
    assert out["malignant"].shape == (2, 1)
    assert out["diagnosis"].shape == (2, 3)


def test_heads_are_sized_from_tasks_and_reported_channels():
    backbone = BasicUNetBackbone(spatial_dims=2, features=(4, 4, 8, 8, 16, 6))
    tasks = [
        Task(name="organs", kind="segmentation", classes=("bg", "liver", "spleen", "kidney")),
        Task(name="findings", kind="multilabel", classes=("a", "b", "c", "d", "e")),
    ]
    net = MultiTaskNet(backbone, tasks)
    assert isinstance(net.heads["organs"], SegmentationHead)
    assert (net.heads["organs"].conv.in_channels, net.heads["organs"].conv.out_channels) == (6, 4)
    assert isinstance(net.heads["findings"], ClassificationHead)
    assert (net.heads["findings"].fc.in_features, net.heads["findings"].fc.out_features) == (2 * 16, 5)
    assert MultiTaskNet(backbone, tasks, pooling="avg").heads["findings"].fc.in_features == 16


def test_shared_and_task_specific_parameters_partition_the_network(tasks3):
    net = MultiTaskNet("unet", tasks3, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)})
    shared = {id(p) for p in net.shared_parameters()}
    specific = {id(p) for p in net.task_specific_parameters()}
    everything = {id(p) for p in net.parameters()}
    assert shared and specific and not shared & specific and shared | specific == everything
    encoder = {id(p) for m in (net.backbone.conv_0, net.backbone.down_4) for p in m.parameters()}
    decoder = {id(p) for p in net.backbone.upcat_1.parameters()}
    assert encoder <= shared and decoder <= specific  # the decoder serves the segmentation task only
    head = {id(p) for p in net.heads["malignant"].parameters()}
    assert {id(p) for p in net.task_specific_parameters("malignant")} == head
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        net.task_specific_parameters("nope")


def test_training_steps_reduce_every_task_loss(tasks3, trainer, targets_for):
    net = MultiTaskNet("unet", tasks3, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)})
    x = torch.randn(2, 1, 33, 37)
    first, last = trainer(net, x, targets_for(tasks3, 2, (33, 37)), tasks3, steps=6)
    assert all(last[t] < first[t] for t in first), (first, last)


def test_training_steps_reduce_every_task_loss_3d_meshnet(tasks3, trainer, targets_for):
    net = MultiTaskNet("meshnet", tasks3, backbone_kwargs={"spatial_dims": 3, "channels": 4, "dilations": "original"})
    x = torch.randn(2, 1, 9, 11, 13)
    first, last = trainer(net, x, targets_for(tasks3, 2, (9, 11, 13)), tasks3, steps=6)
    assert all(last[t] < first[t] for t in first), (first, last)


def test_classifier_shapes_training_and_refusal_of_segmentation(trainer, targets_for):
    tasks = [
        {"name": "abnormal", "kind": "binary"},
        {"name": "body_part", "kind": "multiclass", "classes": ["elbow", "finger", "hand", "shoulder"]},
    ]
    for backbone, kwargs in [
        ("densenet", {"init_features": 4, "growth_rate": 4, "block_config": (1, 2, 1)}),
        ("resnet10", {"block_inplanes": (4, 8, 8, 16)}),
    ]:
        net = MultiTaskClassifier(tasks, backbone=backbone, backbone_kwargs=kwargs)
        x = torch.randn(4, 1, 33, 37)
        first, last = trainer(net, x, targets_for(tasks, 4, ()), tasks, steps=5)
        assert all(last[t] < first[t] for t in first), (backbone, first, last)
        out = net.eval()(x)
        assert out["abnormal"].shape == (4, 1) and out["body_part"].shape == (4, 4)
    with pytest.raises(ValueError, match="image-level tasks only"):
        MultiTaskClassifier([*tasks, {"name": "mask", "kind": "segmentation", "classes": ["bg", "fg"]}])
    with pytest.raises(ValueError, match="fixes spatial_dims"):
        MultiTaskClassifier(tasks, backbone="resnet10", backbone_kwargs={"spatial_dims": 3})


def test_bad_configurations_raise_clear_errors(tasks3):
    with pytest.raises(ValueError, match="no decoder"):
        MultiTaskNet(ResNetBackbone(layers=(1, 1, 1, 1), block_inplanes=(4, 4, 8, 8)), tasks3)
    with pytest.raises(TypeError, match="MeshNet"):
        MultiTaskNet(MeshNet(channels=4), tasks3)
    with pytest.raises(TypeError, match="Backbone"):
        MultiTaskNet(BasicUNet(spatial_dims=2), tasks3)
    with pytest.raises(ValueError, match="empty"):
        MultiTaskNet("meshnet", [])
    with pytest.raises(ValueError, match="unique"):
        MultiTaskNet("meshnet", [tasks3[1], tasks3[1]])
    with pytest.raises(ValueError, match=r"tasks\[0\]"):
        MultiTaskNet("meshnet", [{"name": "x", "kind": "multiclass"}])  # no classes
    with pytest.raises(TypeError, match="list of tasks"):
        MultiTaskNet("meshnet", tasks3[1])
    with pytest.raises(ValueError, match="backbone_kwargs"):
        MultiTaskNet(BasicUNetBackbone(spatial_dims=2), tasks3, backbone_kwargs={"spatial_dims": 2})
    net = MultiTaskNet("meshnet", tasks3, backbone_kwargs={"spatial_dims": 2, "channels": 2})
    with pytest.raises(ValueError, match=r"expected input \(B, 1, <2 spatial dims>\), got shape \[1, 2, 8, 8\]"):
        net(torch.zeros(1, 2, 8, 8))
