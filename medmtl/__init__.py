"""medmtl: multi-task learning on medical images, built on MONAI."""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__"]
