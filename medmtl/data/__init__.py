"""Data: the Task model, data specs, datalists, readers, validation, DICOM conversion, demo data."""

from __future__ import annotations

from medmtl.data.tasks import LabelQuality, Task, TaskKind, as_tasks, num_outputs, present_key

__all__ = ["LabelQuality", "Task", "TaskKind", "as_tasks", "num_outputs", "present_key"]
