"""TrainingCacheDataset: the same samples as MONAI's CacheDataset, as plain tensors, stored compactly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from monai.data import CacheDataset, MetaTensor

from medmtl.data.datasets import FLOAT16_RTOL, Packed, TrainingCacheDataset, strip_meta, training_dataset
from medmtl.data.demo import generate_demo2d, generate_demo_data
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
        extra = {"compact": False} if cls is TrainingCacheDataset else {}  # exact; compact storage: below
        dataset = cls(data, transform, cache_rate=1.0, progress=False, **extra)
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
    assert all(isinstance(item["image"], Packed | torch.Tensor) for item in dataset._cache)  # loaded once, cached
    for i in (0, len(data) - 1):  # a cached and an uncached item
        sample = dataset[i]
        assert sample["image_weak"].shape == sample["image_strong"].shape == (1, 32, 32)


def _demo(tmp_path, cases: int = 12):
    generate_demo_data(tmp_path, num_cases=cases, seed=0)
    spec = load_spec("data_specs/demo.yaml", root=str(tmp_path / "demo2d"))
    return spec, spec.build_cases().datalist("train")


def test_compact_cache_equals_float32_cache_and_is_smaller(tmp_path) -> None:
    """Masks exact (uint8), images within FLOAT16_RTOL of their range (float16); threads change nothing."""
    spec, data = _demo(tmp_path)
    transform = build_transforms(spec, 32, train=False)
    full = TrainingCacheDataset(data, transform, compact=False, num_workers=1, progress=False)
    small = TrainingCacheDataset(data, transform, num_workers=1, progress=False)
    threaded = TrainingCacheDataset(data, transform, num_workers=3, progress=False)
    assert small.cache_nbytes() < 0.6 * full.cache_nbytes()
    for i in range(len(data)):
        reference, packed, parallel = full[i], small[i], threaded[i]
        for key in ("image", "lesion"):
            assert packed[key].dtype == reference[key].dtype == torch.float32
            assert torch.equal(parallel[key], packed[key])  # deterministic whatever the thread count
        assert torch.equal(packed["lesion"], reference["lesion"])
        value_range = float(reference["image"].max() - reference["image"].min())
        assert float((packed["image"] - reference["image"]).abs().max()) <= FLOAT16_RTOL * value_range
        assert packed["case_id"] == reference["case_id"]
    assert small[0]["image"] is not small[0]["image"]  # fresh tensors: augmentations cannot alter the cache


def test_random_transforms_run_on_the_unpacked_item(tmp_path) -> None:
    spec, data = _demo(tmp_path)
    datasets = []
    for compact in (False, True):
        transform = build_transforms(spec, 32, train=True)
        transform.set_random_state(seed=3)
        datasets.append(TrainingCacheDataset(data, transform, compact=compact, progress=False))
    for i in range(4):
        reference, packed = datasets[0][i], datasets[1][i]
        assert packed["image"].dtype == torch.float32
        # the same random draws: masks equal but where nearest interpolation meets a float16-rounded coordinate
        assert float((packed["lesion"] != reference["lesion"]).float().mean()) < 0.01
        assert float((packed["image"] - reference["image"]).abs().max()) < 0.05


def test_disk_cache_needs_a_folder_and_a_known_mode(tmp_path) -> None:
    spec, data = _demo(tmp_path)
    transform = build_transforms(spec, 32, train=False)
    with pytest.raises(ValueError, match="cache_dir"):
        training_dataset(data, transform, cache="disk")
    with pytest.raises(ValueError, match="memory"):
        training_dataset(data, transform, cache="ram")
    disk = training_dataset(data, transform, cache="disk", cache_dir=tmp_path / "cache", progress=False)
    memory = training_dataset(data, transform, cache="memory", compact=False, progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 0  # written on first access
    for i in range(len(data)):
        assert torch.equal(disk[i]["image"], memory[i]["image"]) and torch.equal(disk[i]["lesion"], memory[i]["lesion"])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == len(data)


_UNDER_LIMIT = """
import resource, sys, torch
from monai.data import DataLoader
from medmtl.data.datasets import training_dataset
from medmtl.data.spec import load_spec
from medmtl.transforms import build_transforms

root, cache = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
spec = load_spec("data_specs/demo.yaml", root=root)
data = spec.build_cases().datalist("train")
transform = build_transforms(spec, 512, train=False)  # 1 case: 512^2 float32 image + mask = 2 MB
net = torch.nn.Conv2d(1, 2, 3, padding=1)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
pool = torch.nn.AvgPool2d(8)  # a small step: its own buffers stay far below the budget

def step(batch):
    optimizer.zero_grad()
    target = (pool(batch["lesion"])[:, 0] > 0.5).long()
    loss = torch.nn.functional.cross_entropy(net(pool(batch["image"])), target)
    loss.backward()
    optimizer.step()

def out_of_memory(err):
    while err is not None:  # MONAI wraps a transform's error in a RuntimeError; torch's allocator raises one
        if isinstance(err, MemoryError) or "can't allocate memory" in str(err):
            return True
        err = err.__cause__
    return False

warm = training_dataset(data[:2], transform, cache="disk", cache_dir=cache + "_warm")
for batch in DataLoader(warm, batch_size=2):
    step(batch)  # allocators, lazy imports and the first backward before the limit
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
budget = 32 * 2**20  # less than the data cached in memory: 2 MB per case
resource.setrlimit(resource.RLIMIT_AS, (vm + budget, resource.RLIM_INFINITY))
dataset = training_dataset(data, transform, cache="disk", cache_dir=cache)
for epoch in range(2):
    for batch in DataLoader(dataset, batch_size=2, shuffle=True):
        step(batch)
print("disk trained", len(dataset))
try:  # the same items held in memory (what cache="memory" keeps), in this thread: over the limit
    held = [dataset[i] for i in range(len(dataset))]
    print("memory held", len(held))
except Exception as err:
    if not out_of_memory(err):
        raise
    print("memory out of memory")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_disk_cache_trains_on_data_larger_than_the_memory_limit(tmp_path) -> None:
    """Under an address-space limit smaller than the data, ``disk`` trains 2 epochs; holding the items in memory fails."""
    generate_demo2d(tmp_path / "demo2d", 60, 0)  # about 40 training cases: 80 MB in memory, 32 MB allowed
    script = tmp_path / "under_limit.py"
    script.write_text(textwrap.dedent(_UNDER_LIMIT))
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "demo2d"), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        # every tensor its own mmap, one arena: the address space grows with what is held, not with malloc's reserve
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("disk trained") for line in lines), run.stdout
    assert "memory out of memory" in lines, run.stdout  # the limit is real: the same items do not fit in memory


def test_bundle_cache_key_picks_memory_or_disk(tmp_path) -> None:
    """``--cache disk`` in the bundles: the training dataset is persistent, under the run's folder."""
    from monai.bundle import ConfigParser

    from medmtl.bundle_layers import config_layers
    from medmtl.data.datasets import TrainingPersistentDataset

    generate_demo2d(tmp_path / "demo2d", 10, 0)
    for cache, kind in (("memory", TrainingCacheDataset), ("disk", TrainingPersistentDataset)):
        parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_layers("demo", "train")]))
        parser["data_spec"] = "data_specs/demo.yaml"
        parser["output_dir"] = str(tmp_path / cache)
        parser["dataset_dir"] = str(tmp_path / "demo2d")
        parser["cache"] = cache
        dataset = parser.get_parsed_content("train::dataset")
        assert type(dataset) is kind
        assert dataset[0]["image"].dtype == torch.float32
    assert len(list((tmp_path / "disk" / "cache").glob("*.pt"))) == 1


def test_disk_cache_is_rebuilt_when_the_spatial_size_changes(tmp_path) -> None:
    """The bundle's ``--cache disk`` keys items by the run's settings: a new size in the same folder is not read stale."""
    from monai.bundle import ConfigParser

    from medmtl.bundle_layers import config_layers

    generate_demo2d(tmp_path / "demo2d", 10, 0)
    cache = tmp_path / "run" / "cache"

    def first_item(size: int) -> dict:
        parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_layers("demo", "train")]))
        parser["data_spec"] = "data_specs/demo.yaml"
        parser["output_dir"] = str(tmp_path / "run")
        parser["dataset_dir"] = str(tmp_path / "demo2d")
        parser["cache"] = "disk"
        parser["spatial_size"] = [size, size]
        return parser.get_parsed_content("train::dataset")[0]

    def files() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}

    assert first_item(32)["image"].shape[-2:] == (32, 32)
    written = files()
    assert len(written) == 1
    assert first_item(48)["image"].shape[-2:] == (48, 48)  # transformed again, not the 32 px item
    assert len(files()) == 2 and {k: v for k, v in files().items() if k in written} == written
    again = files()
    assert first_item(48)["image"].shape[-2:] == (48, 48)
    assert files() == again  # unchanged settings: the cached item is read, nothing written
