"""Reading any supported file into arrays with geometry, through MONAI's ``LoadImage``.

MONAI picks a reader by file suffix (NIfTI: nibabel, PNG/JPEG/TIFF: PIL, ``.npy``: NumPy, DICOM:
pydicom). This module only adds what medmtl needs on top: one entry point for checks that need raw
voxels (derived labels, validation) and the DICOM readers registered in :mod:`medmtl.data.dicom`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from monai.transforms import LoadImage

__all__ = ["load_array", "load_image"]


@lru_cache(maxsize=1)
def _loader() -> LoadImage:
    return LoadImage(image_only=True, ensure_channel_first=False)


def load_image(path: str):
    """A MetaTensor with the file's voxels and geometry (affine, spacing) in ``.meta``."""
    return _loader()(path)


def load_array(path: str) -> np.ndarray:
    """The file's voxels as a NumPy array (no geometry)."""
    return np.asarray(load_image(path))
