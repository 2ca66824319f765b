"""Training datasets: MONAI's ``CacheDataset`` without per-item metadata work after the cache.

Why: on small 2D images the per-item ``MetaTensor`` bookkeeping (affine updates, applied-operation
lists, deep copies of metadata dicts, metadata collation) costs as much as the augmentation itself:
on the 780 BUSI images at 128 px an epoch takes 2.04 s with ``CacheDataset`` and 0.92 s here
(8.86 s with MONAI's uncached ``Dataset``; ``benchmarks/data_pipeline.py``).
Training never inverts its augmentations, so once the deterministic prefix (load, reorient,
resample, scale) is cached, the metadata is dead weight. Validation and inference keep it (their
masks are mapped back to the input geometry), so they use MONAI's datasets unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from monai.data import CacheDataset, MetaTensor, get_track_meta, set_track_meta
from monai.transforms import Compose

logger = logging.getLogger(__name__)

__all__ = ["TrainingCacheDataset", "strip_meta"]


def strip_meta(item: Any) -> Any:
    """``MetaTensor`` -> plain ``torch.Tensor`` throughout dicts/lists (other values unchanged)."""
    if isinstance(item, MetaTensor):
        return item.as_tensor()
    if isinstance(item, Mapping):
        return {k: strip_meta(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(strip_meta(v) for v in item)
    return item


@contextmanager
def _meta_tracking(enabled: bool):
    previous = get_track_meta()
    set_track_meta(enabled)
    try:
        yield
    finally:
        set_track_meta(previous)


class TrainingCacheDataset(CacheDataset):
    """``CacheDataset`` whose cached items and random transforms run on plain tensors.

    Drop-in for ``CacheDataset`` in a training config::

        "dataset": {"_target_": "medmtl.data.datasets.TrainingCacheDataset", "data": "...",
                    "transform": "@train::preprocessing", "cache_rate": 1.0}

    Args:
        data: the datalist.
        transform: a ``Compose``; its deterministic prefix is cached (with metadata, so spacing and
            orientation are applied correctly), then the metadata is dropped.
        track_meta: keep ``MetaTensor`` metadata after the cache (MONAI's behaviour); off by default.
        kwargs: the other ``CacheDataset`` arguments (``cache_rate``, ``num_workers``, ``progress``...).
    """

    def __init__(
        self,
        data: Sequence[Any],
        transform: Sequence[Callable] | Callable | None = None,
        track_meta: bool = False,
        **kwargs: Any,
    ) -> None:
        self.track_meta = bool(track_meta)
        if isinstance(transform, Compose) and any(isinstance(t, Compose) for t in transform.transforms):
            # nested Composes (a preprocessing chain inside an augmentation chain) count as random to
            # CacheDataset, which would then cache nothing: flatten so the deterministic prefix is cached
            transform = transform.flatten()
        start = time.perf_counter()
        super().__init__(data, transform, **kwargs)
        if self.cache_num:  # the start-up cost a user waits for before epoch 1 (decoding, resampling)
            logger.info(
                "cached the deterministic transforms of %d of %d cases in %.1f s",
                self.cache_num,
                len(self.data),
                time.perf_counter() - start,
            )

    def _load_cache_item(self, idx: int) -> Any:
        item = super()._load_cache_item(idx)
        return item if self.track_meta else strip_meta(item)

    def _transform(self, index: int) -> Any:
        cached = not self.hash_as_key and index % len(self) < self.cache_num
        if self.track_meta or not cached:  # uncached items load through readers that need metadata
            return super()._transform(index)
        with _meta_tracking(False):
            return strip_meta(super()._transform(index))
