"""Planning a training from the data: the dataset fingerprint (and the plan built from it)."""

from __future__ import annotations

from medmtl.planning.fingerprint import (
    FINGERPRINT_VERSION,
    FingerprintError,
    compute_fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from medmtl.planning.plan_file import PlanError, check_plan, plan_summary, read_plan

__all__ = [
    "FINGERPRINT_VERSION",
    "FingerprintError",
    "compute_fingerprint",
    "read_fingerprint",
    "write_fingerprint",
    "PlanError",
    "check_plan",
    "plan_summary",
    "read_plan",
]
