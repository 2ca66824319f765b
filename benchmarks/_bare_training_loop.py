"""The demo bundle's network in a bare training loop: the machine's own DDP-vs-threads ratio.

``ddp_scaling.py`` runs this file as 1 process (``OMP_NUM_THREADS=2``) and under ``torchrun`` (2
processes x 1 thread, gloo), the same way it runs the bundle. Why: whether 2 single-threaded
processes beat 1 process with 2 intra-op threads depends first on the machine and the network (how
well the convolutions scale over threads, how fast gloo reduces the gradients), not on the
pipeline around them. Timing the same network with nothing around it (tensors already in memory,
plain losses, ``AdamW``, DDP with the bundle's ``gradient_as_bucket_view``, the allocator tuned as
the bundles tune it on CPU unless ``--default-allocator``) gives the ratio a pipeline can at best
reach here, and so separates the machine's limit from medmtl's overhead.

Prints one line ``BENCH_BARE step_s=<median seconds per step of the global batch>`` from rank 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.bundle import ConfigParser

from medmtl.bundle_layers import config_layers
from medmtl.engines import tune_host_allocator


def demo_network(data_spec: str, features: list[int]) -> torch.nn.Module:
    """The demo bundle's ``network_def`` with these backbone features (dropout off, as in the benchmark's bundle runs)."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers("demo", "train")])  # the shared layer, then the demo's
    parser["data_spec"] = data_spec
    parser["resume"] = False  # no run record of ./runs/demo may replace these settings
    parser["backbone_presets"]["unet"]["dropout"] = 0.0
    parser["backbone_presets"]["unet"]["features"] = features
    return parser.get_parsed_content("network_def")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-spec", required=True)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--default-allocator", action="store_true", help="skip tune_host_allocator")
    parser.add_argument("--features", type=lambda text: [int(v) for v in text.split(",")], required=True)
    args = parser.parse_args()

    tune_host_allocator("cpu", enabled=not args.default_allocator)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    torch.manual_seed(0)
    network = demo_network(args.data_spec, args.features)
    model = torch.nn.parallel.DistributedDataParallel(network, gradient_as_bucket_view=True) if distributed else network
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
    batch = args.global_batch // world
    image = torch.randn(batch, 1, args.size, args.size)
    mask = torch.randint(0, 2, (batch, args.size, args.size))
    label = torch.randint(0, 2, (batch, 1)).float()

    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(image)
        loss = F.cross_entropy(out["lesion"], mask) + F.binary_cross_entropy_with_logits(out["malignant"], label)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    if rank == 0:
        sys.stdout.write(f"BENCH_BARE step_s={statistics.median(times[args.warmup :])}\n")
        sys.stdout.flush()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
