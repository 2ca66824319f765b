"""TrainingCacheDataset: the same samples as MONAI's CacheDataset, as plain tensors."""

from __future__ import annotations

import torch
from monai.data import CacheDataset, MetaTensor

from medmtl.data.datasets import TrainingCacheDataset, strip_meta
from medmtl.data.demo import generate_demo_data
from medmtl.data.spec import load_spec
from medmtl.transforms import build_transforms


def test_same_augmented_samples_without_metadata(tmp_path) -> None:
    generate_demo_data(tmp_path, num_cases=12, seed=0)
    spec = load_spec("data_specs/demo.yaml", root=str(tmp_path / "demo2d"))
    data = spec.build_cases().datalist("train")
    samples = {}
    for cls in (CacheDataset, TrainingCacheDataset):
        transform = build_transforms(spec, 32, train=True)
        transform.set_random_state(seed=7)
        dataset = cls(data, transform, cache_rate=1.0, progress=False)
        samples[cls] = [dataset[i] for i in range(len(dataset))]
    for reference, fast in zip(samples[CacheDataset], samples[TrainingCacheDataset], strict=True):
        assert isinstance(reference["image"], MetaTensor)
        assert type(fast["image"]) is torch.Tensor and type(fast["lesion"]) is torch.Tensor
        torch.testing.assert_close(fast["image"], reference["image"].as_tensor())
        torch.testing.assert_close(fast["lesion"], torch.as_tensor(reference["lesion"]).as_tensor())
        assert fast["case_id"] == reference["case_id"]


def test_strip_meta_nested() -> None:
    item = {"a": MetaTensor(torch.ones(2)), "b": [MetaTensor(torch.zeros(1)), 3], "c": "x"}
    out = strip_meta(item)
    assert type(out["a"]) is torch.Tensor and type(out["b"][0]) is torch.Tensor
    assert out["b"][1] == 3 and out["c"] == "x"


def test_nested_preprocessing_is_cached_and_uncached_items_keep_working(tmp_path, caplog) -> None:
    """Weak/strong pairs wrap the preprocessing Compose: its deterministic prefix is still cached."""
    from medmtl.transforms import build_weak_strong_transforms

    generate_demo_data(tmp_path, num_cases=12, seed=0)
    spec = load_spec("data_specs/demo.yaml", root=str(tmp_path / "demo2d"))
    data = spec.build_cases().datalist("train")
    pairs = build_weak_strong_transforms("image", 2, preprocessing=build_transforms(spec, 32, train=False))
    with caplog.at_level("INFO", logger="medmtl.data.datasets"):
        dataset = TrainingCacheDataset(data, pairs, cache_rate=0.5, progress=False)
    assert 0 < dataset.cache_num < len(data)
    assert f"of {dataset.cache_num} of {len(data)} cases in" in caplog.text  # the start-up cost is logged
    assert all(isinstance(item["image"], torch.Tensor) for item in dataset._cache)  # loaded once, cached
    for i in (0, len(data) - 1):  # a cached and an uncached item
        sample = dataset[i]
        assert sample["image_weak"].shape == sample["image_strong"].shape == (1, 32, 32)
