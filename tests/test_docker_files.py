"""The Docker files agree with each other (no Docker engine runs here, so nothing can be built or started).

The image's entry point is ``medmtl`` (``docker run IMAGE predict ...``); a compose service running
another program names its own entry point; the base compose file asks for no GPU (it must start on a
CPU host) and ``compose.gpu.yaml`` adds the reservation to the services that use one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _entrypoint() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    (line,) = re.findall(r"^ENTRYPOINT (.+)$", text, flags=re.M)
    return json.loads(line)


def test_the_image_is_the_medmtl_command_and_services_name_other_programs() -> None:
    assert _entrypoint() == ["medmtl"]
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert services["mlflow"]["entrypoint"] == ["mlflow"]
    assert services["mlflow"]["command"].split()[0] == "server"
    assert (
        services["trainer"]["entrypoint"] == ["sh", "-c"]
        and "medmtl run demo train" in services["trainer"]["command"][0]
    )
    assert services["predict"]["entrypoint"] == ["medmtl", "predict"]
    mounts = {v.split(":")[1] for v in services["predict"]["volumes"]}
    assert {"/data/in", "/data/out", "/opt/medmtl/runs"} <= mounts


def test_the_base_file_starts_on_a_cpu_host_and_the_gpu_file_adds_the_reservation() -> None:
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert not any("deploy" in s for s in base.values())
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]
    assert set(gpu) <= set(base)
    for service in gpu.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
