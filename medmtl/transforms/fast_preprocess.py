"""MONAI's percentile scaling and anti-aliased resize with the same output, at a fraction of the cost.

Why: on BUSI (about 500x600 px to 128 px) these two steps cost about 4x a plain MONAI chain
(``issues show 23``): ``ScaleIntensityRangePercentiles`` sorts every pixel (``torch.quantile``) and
``Resize(anti_aliasing=True)`` blurs the whole full-resolution image before sampling 128x128 points.
Both are replaced by cheaper computations of the *same* values:

- percentiles of an integer-valued image (8/16-bit PNG, DICOM, most CT) come exactly from a histogram
  (``torch.bincount``, one pass) with NumPy's linear interpolation; other images use
  ``np.percentile`` (a linear-time partition, as MONAI itself does above 10^6 values);
- the Gaussian blur and the (bi/tri)linear interpolation are both separable linear maps, so their
  product along each axis is one small ``(out, in)`` matrix, built once per size by running MONAI's own
  ``GaussianSmooth`` and ``torch.nn.functional.interpolate`` on an identity matrix; the image is then
  multiplied by one matrix per axis, touching each input pixel once instead of blurring all of them.

The outputs equal MONAI's up to float32 rounding (``tests/transforms/test_fast_preprocess.py``
asserts max |difference| <= 1e-5 on real-size images), the metadata and the inverse are MONAI's (the
subclasses only change how the values are computed), so validation and inference masks, which are
mapped back through ``Invertd``, are unchanged.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    GaussianSmooth,
    Resize,
    Resized,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import convert_data_type, convert_to_tensor

from medmtl.transforms.dictionary import MergeMasksd

__all__ = [
    "FastPercentileScaled",
    "FastResize",
    "FastResized",
    "exact_percentiles",
    "monai_reference",
    "resize_matrix",
]

_HISTOGRAM_MAX = 1 << 16
"""Largest integer value counted by histogram (16-bit images); wider ranges use ``np.percentile``."""
_LINEAR_MODES = {"linear", "bilinear", "trilinear"}


def exact_percentiles(img: torch.Tensor, q: Sequence[float]) -> list[float]:
    """NumPy's linear-interpolation percentiles of ``img`` (all values), exactly, in linear time.

    Integer-valued images in ``[0, 65535]`` go through a histogram; anything else through
    ``np.percentile`` (introselect, no full sort).
    """
    flat = img.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("percentiles of an empty image are undefined")
    low, high = (float(v) for v in torch.aminmax(flat))
    integer = low >= 0 and high < _HISTOGRAM_MAX
    if integer and flat.is_floating_point():
        values = flat.to(torch.uint8 if high < 256 else torch.int32)
        integer = torch.equal(values.to(flat.dtype), flat)
    elif integer:
        values = flat
    if not integer:
        return [float(v) for v in np.percentile(flat.cpu().numpy(), list(q))]
    cdf = torch.cumsum(torch.bincount(values, minlength=int(high) + 1), 0)
    n = flat.numel()
    positions = [float(percent) / 100.0 * (n - 1) for percent in q]
    below = [int(np.floor(p)) for p in positions]
    ranks = torch.tensor([r for b in below for r in (b, min(b + 1, n - 1))], dtype=cdf.dtype)
    found = torch.searchsorted(cdf, ranks, right=True).tolist()  # the value of each rank, in sorted order
    out = []
    for i, (position, b) in enumerate(zip(positions, below, strict=True)):
        v_below, v_above = float(found[2 * i]), float(found[2 * i + 1])
        fraction = position - b
        # NumPy's _lerp: a + t (b - a), or b - (1 - t)(b - a) from t >= 0.5 (same rounding as np.percentile)
        diff = v_above - v_below
        out.append(v_above - diff * (1 - fraction) if fraction >= 0.5 else v_below + diff * fraction)
    return out


class FastPercentileScaled(ScaleIntensityRangePercentilesd):
    """``ScaleIntensityRangePercentilesd`` computing its percentiles with :func:`exact_percentiles`.

    Same arguments and output as MONAI's; only the percentile search is cheaper.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        s = self.scaler
        self.scaler = _FastPercentileScale(
            s.lower, s.upper, s.b_min, s.b_max, s.clip, s.relative, s.channel_wise, s.dtype
        )


class _FastPercentileScale(ScaleIntensityRangePercentiles):
    def _normalize(self, img):
        # MONAI's _normalize and ScaleIntensityRange.__call__ (monai/transforms/intensity/array.py): the same
        # operations in the same order, on the plain channel tensor. MONAI wraps each channel in a new MetaTensor
        # (an identity affine, metadata copied on every operation), which costs more than the arithmetic on a
        # 256 px picture; nothing of it reaches the output (the caller copies the input's metadata back).
        img = convert_to_tensor(img, track_meta=False)
        a_min, a_max = exact_percentiles(img, (self.lower, self.upper))
        b_min, b_max = self.b_min, self.b_max
        if self.relative:
            if (self.b_min is None) or (self.b_max is None):
                raise ValueError("If it is relative, b_min and b_max should not be None.")
            b_min = ((self.b_max - self.b_min) * (self.lower / 100.0)) + self.b_min
            b_max = ((self.b_max - self.b_min) * (self.upper / 100.0)) + self.b_min
        dtype = self.dtype or img.dtype
        if a_max - a_min == 0.0:
            warnings.warn("Divide by zero (a_min == a_max)", Warning, stacklevel=2)
            return img - a_min if b_min is None else img - a_min + b_min
        out = (img - a_min).div_(a_max - a_min)  # a new tensor, then updated in place: the same values
        if (b_min is not None) and (b_max is not None):
            out.mul_(b_max - b_min).add_(b_min)
        if self.clip:
            out.clamp_(b_min, b_max)
        return convert_data_type(out, dtype=dtype)[0]


@functools.lru_cache(maxsize=64)
def resize_matrix(size_in: int, size_out: int, sigma: float) -> torch.Tensor:
    """The ``(size_out, size_in)`` float32 matrix of MONAI's anti-aliased linear resize along one axis.

    Built by running MONAI's ``GaussianSmooth`` (zero padding, erf kernel truncated at 4 sigma) and
    ``F.interpolate`` (linear, ``align_corners=False``) on the identity, so it is their exact product.
    """
    eye = torch.eye(size_in, dtype=torch.float32)
    blurred = GaussianSmooth(sigma=[sigma])(eye) if sigma > 0 else eye  # row j: the blur of e_j
    # a plain tensor: GaussianSmooth returns a MetaTensor, which would make every product with it pay
    # MetaTensor's per-operation metadata bookkeeping (more than the arithmetic on 256 px images)
    blurred = convert_to_tensor(blurred, track_meta=False)
    sampled = F.interpolate(blurred.unsqueeze(1), size=size_out, mode="linear")
    return sampled[:, 0, :].T.contiguous()


_BANDED_CACHE = 512
"""Axis sizes whose band is kept: BUSI's 780 pictures have 104 distinct side lengths, and a miss costs about
1 ms (MONAI's blur of an identity matrix), more than the resize itself; one entry is a few KB to ~60 KB."""


@functools.lru_cache(maxsize=_BANDED_CACHE)
def _banded(size_in: int, size_out: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`resize_matrix` as ``(indices, weights)``, each ``(size_out, band)``: the non-zero band of each row."""
    matrix = resize_matrix(size_in, size_out, sigma)
    nonzero = matrix != 0
    first = torch.where(nonzero.any(1), nonzero.float().argmax(1), torch.zeros(size_out, dtype=torch.long))
    last = size_in - 1 - nonzero.flip(1).float().argmax(1)
    band = int((last - first).max()) + 1
    start = torch.clamp(first, max=size_in - band)
    indices = start[:, None] + torch.arange(band)[None, :]
    return indices, torch.gather(matrix, 1, indices)


def _apply_axis(image: torch.Tensor, axis: int, size_out: int, sigma: float) -> torch.Tensor:
    """Multiply ``image`` along ``axis`` by the resize matrix, one output row's band at a time.

    The axis is moved first (a copy only where it is not already outermost), each output row gathers
    the ``band`` input slices it depends on and weights them in one batched product, so every input
    value is read about ``band / factor`` times instead of ``size_in`` times (a dense product).
    """
    indices, weights = _banded(image.shape[axis], size_out, sigma)
    band = indices.shape[1]
    front = torch.movedim(image, axis, 0).contiguous()  # (size_in, *others)
    others = front.shape[1:]
    picked = front.index_select(0, indices.reshape(-1)).reshape(size_out, band, -1)
    out = torch.bmm(weights[:, None, :], picked)  # (size_out, 1, prod(others))
    return torch.movedim(out.reshape(size_out, *others), 0, axis)


class FastResize(Resize):
    """``Resize`` whose anti-aliased linear downsampling multiplies by one matrix per axis.

    Falls back to MONAI for everything else (nearest/area modes, upsampling only, lazy resampling,
    ``align_corners=True``, a given ``anti_aliasing_sigma``); the metadata and ``inverse`` are MONAI's.
    """

    def __call__(
        self,
        img: torch.Tensor,
        mode: str | None = None,
        align_corners: bool | None = None,
        anti_aliasing: bool | None = None,
        anti_aliasing_sigma: Sequence[float] | float | None = None,
        dtype=None,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        mode_ = self.mode if mode is None else mode
        align_ = self.align_corners if align_corners is None else align_corners
        anti_ = self.anti_aliasing if anti_aliasing is None else anti_aliasing
        sigma_ = self.anti_aliasing_sigma if anti_aliasing_sigma is None else anti_aliasing_sigma
        lazy_ = self.lazy if lazy is None else lazy
        dtype_ = self.dtype if dtype is None else dtype
        plain = (img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)).to(torch.float32)
        fast = (
            anti_
            and not lazy_
            and not align_
            and sigma_ is None
            and str(mode_) in _LINEAR_MODES
            and dtype_ in (None, torch.float32, np.float32)
            and plain.ndim in (3, 4)
        )
        out = super().__call__(img, mode_, align_, False if fast else anti_, sigma_, dtype_, lazy_)
        size_in = plain.shape[1:]
        size_out = tuple(out.shape[1:])
        if not fast or len(size_out) != len(size_in) or not any(o < i for o, i in zip(size_out, size_in, strict=True)):
            return out
        result = plain
        for axis, (n_in, n_out) in enumerate(zip(size_in, size_out, strict=True)):
            sigma = max((float(torch.tensor(n_in, dtype=torch.float32) / n_out) - 1) / 2, 0.0)  # MONAI's float32
            result = _apply_axis(result, axis + 1, n_out, sigma)
        target = out.as_tensor() if isinstance(out, MetaTensor) else out
        target.copy_(result)
        return out


class FastResized(Resized):
    """``Resized`` running :class:`FastResize` (same arguments, output and inverse)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        r = self.resizer
        self.resizer = FastResize(spatial_size=r.spatial_size, size_mode=r.size_mode, lazy=r.lazy)


def monai_reference(chain: Compose) -> Compose:
    """``chain`` as medmtl built it before these fast steps: MONAI's own transforms, masks merged first.

    :class:`FastPercentileScaled` and :class:`FastResized` become MONAI's
    ``ScaleIntensityRangePercentilesd`` and ``Resized`` with the same arguments, and the
    :class:`~medmtl.transforms.dictionary.MergeMasksd` steps placed after the first of them move back in
    front of it (``build_transforms`` merged masks at full resolution). The result is what the fast
    chain must equal (images within float32 rounding, masks exactly); the tests and
    ``benchmarks/time_to_first_epoch.py`` compare against it.
    """
    steps = list(chain.transforms)
    fast = [i for i, step in enumerate(steps) if isinstance(step, FastPercentileScaled | FastResized)]
    if fast:
        head, tail = steps[: fast[0]], steps[fast[0] :]
        merges = [t for t in tail if isinstance(t, MergeMasksd)]
        steps = head + merges + [t for t in tail if not isinstance(t, MergeMasksd)]
    return Compose([_monai_step(step) for step in steps])


def _monai_step(step):
    """MONAI's transform for a fast step (same arguments); any other step unchanged."""
    if isinstance(step, FastPercentileScaled):
        s = step.scaler
        return ScaleIntensityRangePercentilesd(
            step.keys, s.lower, s.upper, s.b_min, s.b_max, s.clip, s.relative, s.channel_wise, s.dtype,
            allow_missing_keys=step.allow_missing_keys,
        )  # fmt: skip
    if isinstance(step, FastResized):
        return Resized(
            step.keys, spatial_size=step.resizer.spatial_size, mode=step.mode, align_corners=step.align_corners,
            anti_aliasing=step.anti_aliasing, allow_missing_keys=step.allow_missing_keys,
        )  # fmt: skip
    return step
