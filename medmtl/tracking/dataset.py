"""The data a run used, logged with ``mlflow.data``: two runs on different data are told apart.

Why: a run's parameters name the spec and the folder, not what was in it; a label corrected or a
case added between two runs leaves both the same. The digest here is of the file contents (every
input and mask, :func:`medmtl.data.image_signatures.content_digest`) and the labels of every case,
so it changes when the data does, and not when the folder moves. MLflow keeps a short digest with
the dataset; the full sha256 goes into the run's ``medmtl.dataset_sha256`` tag.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DATASET_DIGEST_TAG", "dataset_digest", "log_dataset"]

#: run tag holding the full sha256 of the data (MLflow's dataset digest column is short).
DATASET_DIGEST_TAG = "medmtl.dataset_sha256"
_MLFLOW_DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a dataset's digest


def _value_text(value: Any) -> str:
    """A case field as it enters the digest: a file's content digest, anything else as JSON."""
    from medmtl.data.image_signatures import content_digest

    if isinstance(value, str | os.PathLike) and Path(value).exists():
        return "file:" + content_digest(value)
    paths = isinstance(value, list | tuple) and value and all(isinstance(v, str | os.PathLike) for v in value)
    if paths and all(Path(v).exists() for v in value):
        return "files:" + content_digest(list(value))
    return json.dumps(value, sort_keys=True, default=str)


def dataset_digest(cases: Sequence[Mapping[str, Any]]) -> str:
    """sha256 over every case's id and fields (files by their content, in case-id order)."""
    lines = []
    for case in sorted(cases, key=lambda c: str(c.get("case_id"))):
        fields = ";".join(f"{k}={_value_text(v)}" for k, v in sorted(case.items()) if k != "case_id")
        lines.append(f"{case.get('case_id')}|{fields}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def log_dataset(
    client: Any, run_id: str, name: str, source: str | os.PathLike, cases: Sequence[Mapping[str, Any]], context: str
) -> str:
    """Log the cases as an MLflow dataset input of ``run_id`` (context ``training``, ``evaluation``...).

    Returns:
        The full sha256 (also set as the run's :data:`DATASET_DIGEST_TAG` tag).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    digest = dataset_digest(cases)
    dataset = Dataset(
        name=name,
        digest=digest[:_MLFLOW_DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": str(Path(source).resolve())}),
        profile=json.dumps({"num_cases": len(cases)}),
    )
    entry = DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    client.log_inputs(run_id, datasets=[entry])
    client.set_tag(run_id, DATASET_DIGEST_TAG, digest)
    return digest
