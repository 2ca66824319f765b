"""Training datasets: MONAI's ``CacheDataset`` without per-item metadata work after the cache.

Why: on small 2D images the per-item ``MetaTensor`` bookkeeping (affine updates, applied-operation
lists, deep copies of metadata dicts, metadata collation) costs as much as the augmentation itself:
on the 780 BUSI images at 128 px an epoch takes 2.04 s with ``CacheDataset`` and 0.92 s here
(8.86 s with MONAI's uncached ``Dataset``; ``benchmarks/data_pipeline.py``).
Training never inverts its augmentations, so once the deterministic prefix (load, reorient,
resample, scale) is cached, the metadata is dead weight. Validation and inference keep it (their
masks are mapped back to the input geometry), so they use MONAI's datasets unchanged.

The cache is also what a user waits for before epoch 1 and what fills the memory, so it is built by
MONAI's thread pool (``num_workers``; decoding and resizing release the GIL; items keep their order,
so the result does not depend on the thread count) and stored compactly (:func:`pack`): label maps
and other integer-valued tensors as ``uint8`` (exact), other float tensors as ``float16`` when that
changes no value by more than ``1e-3`` of the tensor's own range (BUSI's [0, 1] images: at most 2.4e-4,
a sixteenth of one 8-bit grey level), else ``float32``. Items are unpacked to their original dtype
before the random transforms run. Datasets larger than the memory use :func:`training_dataset` with
``cache="disk"`` (MONAI's ``PersistentDataset``: one file per item, read back at every access).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, MetaTensor, PersistentDataset, get_track_meta, set_track_meta
from monai.data.utils import json_hashing
from monai.transforms import Compose, RandomizableTrait, Transform

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_MODES",
    "FLOAT16_RTOL",
    "Packed",
    "TrainingCacheDataset",
    "TrainingPersistentDataset",
    "nbytes",
    "pack",
    "strip_meta",
    "training_dataset",
    "unpack",
]

CACHE_MODES = ("memory", "disk")
FLOAT16_RTOL = 1e-3
"""Largest change float16 storage may make to a value, as a fraction of its tensor's range (max - min):
finer than one 8-bit grey level (1/255 = 3.9e-3 of the range), so nothing a network is shown from
an 8-bit picture changes by more than a quarter of a grey level."""


def strip_meta(item: Any) -> Any:
    """``MetaTensor`` -> plain ``torch.Tensor`` throughout dicts/lists (other values unchanged)."""
    if isinstance(item, MetaTensor):
        return item.as_tensor()
    if isinstance(item, Mapping):
        return {k: strip_meta(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(strip_meta(v) for v in item)
    return item


@dataclass(frozen=True)
class Packed:
    """A cached tensor stored in a smaller dtype, and the dtype it is given back in."""

    data: torch.Tensor
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def _pack_tensor(tensor: torch.Tensor, rtol: float) -> torch.Tensor | Packed:
    if not tensor.is_floating_point() or tensor.dtype == torch.float16 or tensor.numel() == 0:
        return tensor
    low, high = float(tensor.min()), float(tensor.max())
    if low >= 0 and high <= 255 and torch.equal(tensor, tensor.round()):
        return Packed(tensor.to(torch.uint8), tensor.dtype)  # label maps, 8-bit pictures: exact
    half = tensor.to(torch.float16)
    if rtol > 0 and bool(torch.isfinite(half).all()):
        error = float((half.to(tensor.dtype) - tensor).abs().max())
        if error <= rtol * (high - low):
            return Packed(half, tensor.dtype)
    return tensor


def pack(item: Any, rtol: float = FLOAT16_RTOL) -> Any:
    """``item`` with its float tensors stored compactly (see the module docstring); ``rtol=0``: uint8 only."""
    if isinstance(item, MetaTensor):
        return item  # metadata kept on purpose (track_meta): stored as is
    if isinstance(item, torch.Tensor):
        return _pack_tensor(item, rtol)
    if isinstance(item, Mapping):
        return {k: pack(v, rtol) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(pack(v, rtol) for v in item)
    return item


def unpack(item: Any) -> Any:
    """The inverse of :func:`pack`: every :class:`Packed` back in its original dtype (new tensors)."""
    if isinstance(item, Packed):
        return item.data.to(item.dtype)
    if isinstance(item, Mapping):
        return {k: unpack(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(unpack(v) for v in item)
    return item


def nbytes(item: Any) -> int:
    """Bytes held by the tensors of ``item`` (packed or not)."""
    if isinstance(item, Packed | torch.Tensor):
        return item.nbytes
    if isinstance(item, Mapping):
        return sum(nbytes(v) for v in item.values())
    if isinstance(item, list | tuple):
        return sum(nbytes(v) for v in item)
    return 0


def _first_random(transform: Compose) -> int | None:
    return transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))


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
        compact: store the cached tensors compactly (:func:`pack`; not with ``track_meta``).
        float16_rtol: see :data:`FLOAT16_RTOL`; ``0`` keeps every non-integer tensor in its dtype.
        num_workers: threads building the cache (``None``: one per core; ``0`` or ``1``: this thread).
        kwargs: the other ``CacheDataset`` arguments (``cache_rate``, ``progress``...).
    """

    def __init__(
        self,
        data: Sequence[Any],
        transform: Sequence[Callable] | Callable | None = None,
        track_meta: bool = False,
        *,
        compact: bool = True,
        float16_rtol: float = FLOAT16_RTOL,
        num_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.track_meta = bool(track_meta)
        self.compact = bool(compact) and not self.track_meta
        self.float16_rtol = float(float16_rtol)
        if isinstance(transform, Compose) and any(isinstance(t, Compose) for t in transform.transforms):
            # nested Composes (a preprocessing chain inside an augmentation chain) count as random to
            # CacheDataset, which would then cache nothing: flatten so the deterministic prefix is cached
            transform = transform.flatten()
        start = time.perf_counter()
        super().__init__(data, transform, num_workers=num_workers, **kwargs)
        if self.cache_num:  # the start-up cost a user waits for before epoch 1 (decoding, resampling)
            logger.info(
                "cached the deterministic transforms of %d of %d cases in %.1f s (%d threads, %.1f MB)",
                self.cache_num,
                len(self.data),
                time.perf_counter() - start,
                self.num_workers or os.cpu_count() or 1,
                self.cache_nbytes() / 1e6,
            )

    def cache_nbytes(self) -> int:
        """Bytes held by the cached tensors (what the cache costs in memory, metadata left out)."""
        return sum(nbytes(item) for item in (self._cache or []) if item is not None)

    def _load_cache_item(self, idx: int) -> Any:
        item = super()._load_cache_item(idx)
        if self.track_meta:
            return item
        item = strip_meta(item)
        return pack(item, self.float16_rtol) if self.compact else item

    def _transform(self, index: int) -> Any:
        cached = not self.hash_as_key and index % len(self) < self.cache_num
        if self.track_meta or not cached:  # uncached items load through readers that need metadata
            return super()._transform(index)
        if self._cache is None:
            raise RuntimeError("cache buffer is not initialized, please call `set_data()` first.")
        index = index % len(self)
        if self._cache[index] is None:
            self._cache[index] = self._load_cache_item(index)
        data = unpack(self._cache[index])  # fresh tensors: the random transforms cannot alter the cache
        first_random = _first_random(self.transform)
        if first_random is None:
            return data
        if not self.compact and self.copy_cache:
            data = deepcopy(data)
        with _meta_tracking(False):
            return strip_meta(self.transform(data, start=first_random))


class TrainingPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` with the random transforms on plain tensors, for data larger than memory.

    The deterministic prefix of every item is written once to ``cache_dir`` (``torch.save``, read back
    with ``weights_only=True``: nothing executable) and read back at every access, so the memory holds
    only the batches in flight. Cache files are named by the datalist entry, the size and modification
    time of its files, the names of the cached transforms and ``settings``: an edited image, or a run
    with another spatial size in the same ``cache_dir``, is transformed again instead of read stale.
    MONAI's ``hash_transform`` sees only the transforms' class names (their parameters are not JSON),
    hence ``settings``: the values the transforms were built from.

    Args:
        data: the datalist.
        transform: a ``Compose`` (its deterministic prefix is what goes to disk).
        cache_dir: folder of the cache files (created).
        settings: JSON values that define the cached preprocessing (the bundles pass the run's
            recorded ``@settings``: spatial size, intensity, data spec...); ``None``: keep one
            ``cache_dir`` per transform setting yourself.
        kwargs: the other ``PersistentDataset`` arguments.

    Raises:
        TypeError: ``settings`` is not JSON (its digest names the cache files).
    """

    def __init__(
        self,
        data: Sequence[Any],
        transform: Sequence[Callable] | Callable,
        cache_dir: str | os.PathLike,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(transform, Compose) and any(isinstance(t, Compose) for t in transform.transforms):
            transform = transform.flatten()
        try:
            self.settings_hash = json_hashing(dict(settings or {})).decode()
        except TypeError as err:
            raise TypeError(
                f"TrainingPersistentDataset: settings must be JSON values (they key the cache): {err}"
            ) from None
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("hash_func", _item_hash)
        kwargs.setdefault("hash_transform", json_hashing)
        super().__init__(data, transform, cache_dir=cache_dir, track_meta=False, weights_only=True, **kwargs)

    def set_transform_hash(self, hash_xform_func: Callable[..., bytes]) -> None:
        """MONAI's hash of the cached transforms (their names), combined with the digest of ``settings``."""
        super().set_transform_hash(hash_xform_func)
        self.transform_hash = json_hashing([self.transform_hash, self.settings_hash]).decode()

    def _post_transform(self, item_transformed: Any) -> Any:
        # the cached prefix runs with metadata (readers, orientation need it); what follows does not
        with _meta_tracking(False):
            return strip_meta(super()._post_transform(strip_meta(item_transformed)))


def _item_hash(item: Mapping[str, Any]) -> bytes:
    """sha256 of a datalist entry and of the size and modification time of every file it names."""

    def stamp(value: Any) -> Any:
        if isinstance(value, str) and os.path.isfile(value):
            info = os.stat(value)
            return [value, info.st_size, info.st_mtime_ns]
        if isinstance(value, list | tuple):
            return [stamp(v) for v in value]
        return value

    text = json.dumps({str(k): stamp(v) for k, v in item.items()}, sort_keys=True, default=str)
    return json_hashing(text)


def training_dataset(
    data: Sequence[Any],
    transform: Sequence[Callable] | Callable,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    settings: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> TrainingCacheDataset | TrainingPersistentDataset:
    """The training dataset a bundle's ``cache`` key asks for.

    Args:
        data, transform: the datalist and its transform chain.
        cache: ``memory`` (:class:`TrainingCacheDataset`, the default: fastest epochs) or ``disk``
            (:class:`TrainingPersistentDataset`: datasets larger than the memory).
        cache_dir: where ``disk`` writes its files (required for it).
        num_workers: threads building the ``memory`` cache (``None``: one per core).
        settings: what defines the preprocessing, part of the ``disk`` cache's file names
            (:class:`TrainingPersistentDataset`); the ``memory`` cache lives one run and needs none.
        kwargs: further arguments of the chosen class (``cache_rate``, ``progress``, ``compact``... for
            ``memory``).

    Raises:
        ValueError: an unknown ``cache``, or ``disk`` without ``cache_dir``.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache={cache!r} is not one of {list(CACHE_MODES)} (memory: fastest; disk: larger than RAM)")
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir (a folder for one file per item), e.g. runs/x/cache")
        for key in ("cache_rate", "progress", "compact", "float16_rtol", "copy_cache"):
            kwargs.pop(key, None)  # memory-cache options, meaningless on disk
        return TrainingPersistentDataset(data, transform, cache_dir, settings=settings, **kwargs)
    return TrainingCacheDataset(data, transform, num_workers=num_workers, **kwargs)
