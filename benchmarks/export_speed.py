"""CPU inference time of an exported network: onnxruntime vs PyTorch (eager), 2D and 3D bundle networks.

Why: ``medmtl export`` offers ONNX for deployment; this says what onnxruntime gains (or loses) over
running the same network in PyTorch on a CPU. The networks are the bundles' own ``network_def``
(random weights: the time does not depend on them): ``ultrasound_mtl`` (2D U-Net, lesion mask +
diagnosis) at 160x160 and ``brain_mri_mtl`` (3D U-Net, brain mask + label quality) at 64^3, batch 1.
Each is exported with :func:`medmtl.deploy.export_network` (parity checked) and both runtimes are
timed side by side (warm-up, interleaved rounds, median and interquartile range) with one thread
and with each runtime's default thread count.

Run: ``python benchmarks/export_speed.py [--quick] [--repeats 15]``; prints the table and writes
``benchmarks/results/export_speed.json`` (``--quick``: 3 repeats, ``export_speed.quick.json``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import REPO, interleaved, machine, print_table, ratio_spread, spread_text, summary, write_results
from monai.bundle import ConfigParser

from medmtl.bundle_layers import config_layers
from medmtl.deploy import export_network, input_layout, load_exported

NETWORKS = {  # bundle: (overrides, label)
    "ultrasound_mtl": ({"spatial_size": [160, 160]}, "2D U-Net 160x160"),
    "brain_mri_mtl": ({"spatial_size": [64, 64, 64]}, "3D U-Net 64^3"),
}


def bundle_network(bundle: str, overrides: dict[str, Any], work: Path) -> tuple[torch.nn.Module, list, list, list]:
    """The bundle's network (its merged config's ``network_def``), tasks, input keys and spatial size."""
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_layers(bundle, "train")]))
    parser["data_spec"] = str(REPO / parser["data_spec"])
    parser["output_dir"] = str(work / "run")  # no run there: the config's own settings
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    spatial = list(parser.get_parsed_content("settings")["spatial_size"])
    return network, list(parser.get_parsed_content("tasks")), list(parser.get_parsed_content("input_keys")), spatial


def iqr(times: list[float]) -> float:
    q1, _, q3 = statistics.quantiles(times, n=4)
    return q3 - q1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repeats, written to export_speed.quick.json")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
    default_threads = torch.get_num_threads()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for bundle, (overrides, label) in NETWORKS.items():
            network, tasks, keys, spatial = bundle_network(bundle, overrides, work)
            layout = input_layout(network, tasks, keys, spatial)
            path = work / f"{bundle}.onnx"
            export_network(network, tasks, layout, "onnx", path)
            x = np.random.default_rng(0).random((1, layout.channels, *spatial), dtype=np.float32)
            tensor = torch.from_numpy(x)
            for threads, name in ((1, "1 thread"), (default_threads, f"default ({default_threads} threads)")):
                torch.set_num_threads(threads)
                model = load_exported(path, threads=threads)

                def run_torch(net: torch.nn.Module = network, t: torch.Tensor = tensor) -> None:
                    with torch.no_grad():
                        net(t)

                times = interleaved(
                    {"pytorch": run_torch, "onnxruntime": lambda m=model, a=x: m(a)}, repeats=repeats, warmup=2
                )
                torch_s, ort_s = statistics.median(times["pytorch"]), statistics.median(times["onnxruntime"])
                spread = ratio_spread(times["pytorch"], times["onnxruntime"])  # per round: PyTorch / onnxruntime
                rows.append(
                    [label, name, torch_s * 1e3, iqr(times["pytorch"]) * 1e3, ort_s * 1e3,
                     iqr(times["onnxruntime"]) * 1e3, spread_text(spread)]
                )  # fmt: skip
                results[f"{bundle}/{threads}"] = {
                    "network": label,
                    "threads": threads,
                    "pytorch": summary(times["pytorch"]),
                    "onnxruntime": summary(times["onnxruntime"]),
                    "speedup_onnxruntime": torch_s / ort_s,  # ratio of the medians
                    "speedup_onnxruntime_spread": spread,  # per round (no goal: a measurement)
                }
    torch.set_num_threads(default_threads)
    print_table(
        ["network", "threads", "PyTorch ms", "IQR", "onnxruntime ms", "IQR", "PyTorch / ORT (per round)"],
        rows,
        title=f"CPU inference, batch 1, median of {repeats} interleaved rounds",
    )
    write_results("export_speed", machine(repeats=repeats), results, quick=args.quick)


if __name__ == "__main__":
    main()
