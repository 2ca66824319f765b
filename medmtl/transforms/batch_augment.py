"""Random augmentation of a whole batch at once, on the device the batch trains on.

Why: once :class:`~medmtl.data.datasets.TrainingCacheDataset` caches the deterministic prefix of a
transform chain, the per-item random transforms (flip, affine, noise, contrast) dominate the epoch:
on 780 BUSI images at 128 px they cost 0.9 s per epoch on CPU, more than a plain PIL loader. MONAI's
fast-training guide caches the deterministic part and runs the random part on the GPU;
:class:`BatchAugment` does that with per-sample random parameters applied by vectorised torch ops
(flips by index masks, one ``affine_grid`` + ``grid_sample`` for the batch, noise, gamma), which is
fast on CPU as well. The transform chain then has no random step, so the dataset caches everything.

The parameter distributions are those of :func:`medmtl.transforms.build_transforms` with
``train=True`` (MONAI's ``RandFlipd``, ``RandAffined``, ``RandGaussianNoised``,
``RandAdjustContrastd``), drawn independently for every sample and shared by all keys of a sample,
so images and masks stay aligned. Images are resampled (bi/tri)linearly, label maps with nearest
neighbour, both with zero padding; placeholder masks of absent labels are zeros and stay zeros.

Reproducibility: every call reseeds the object's own ``torch.Generator`` (on the batch's device)
from ``(seed, DDP rank, number of calls)``. The state is therefore just the call count:
:meth:`BatchAugment.state_dict` / :meth:`~BatchAugment.load_state_dict` make a resumed run continue
with the same augmentations as an uninterrupted one, and every DDP rank restores its own stream
from rank 0's checkpoint (all ranks make the same number of calls).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["BatchAugment"]

_EPS = 1e-7  # MONAI AdjustContrast's epsilon


class BatchAugment:
    """Per-sample random flip, affine, Gaussian noise and gamma contrast for a collated batch.

    Args:
        spatial_dims: 2 or 3.
        flip_axes: spatial axes flipped at random (each with probability ``flip_prob``, independently);
            ``None``: all axes, ``()``: none.
        rotate_degrees: largest rotation (about every axis in 3D); with probability ``aug_prob``
            the sample gets a random affine (rotation, zoom and shift together).
        scale: largest zoom change per axis (0.1: factors 0.9 to 1.1).
        translate: largest shift per axis as a fraction of the image size.
        noise_std: largest standard deviation of the Gaussian noise (drawn uniformly from
            ``[0, noise_std)`` per sample, applied with probability ``aug_prob``).
        gamma: range of the contrast exponent (uniform), applied with probability ``aug_prob`` on
            each image's own intensity range, like MONAI's ``AdjustContrast``.
        aug_prob: probability of each of the affine, noise and contrast augmentations.
        flip_prob: probability of a flip per axis.
        image_keys: keys of images (default for :meth:`__call__`).
        label_keys: keys of dense label maps: index or one-hot masks, any dtype (default for
            :meth:`__call__`).
        seed: seed of the random stream.

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3, a flip axis out of range, a probability
            outside ``[0, 1]``, a negative range or an empty ``gamma`` interval.

    Example::

        augment = BatchAugment(spatial_dims=2, flip_axes=[0], label_keys=["lesion"], seed=0)
        batch = augment({"image": images.cuda(), "lesion": masks.cuda()})  # (B, C, H, W) each
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        flip_axes: Sequence[int] | None = None,
        rotate_degrees: float = 15.0,
        scale: float = 0.1,
        translate: float = 0.05,
        noise_std: float = 0.05,
        gamma: Sequence[float] = (0.75, 1.35),
        aug_prob: float = 0.5,
        flip_prob: float = 0.5,
        image_keys: Sequence[str] = ("image",),
        label_keys: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"BatchAugment: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = int(spatial_dims)
        axes = tuple(range(spatial_dims)) if flip_axes is None else tuple(int(a) for a in flip_axes)
        bad = [a for a in axes if not 0 <= a < spatial_dims]
        if bad:
            raise ValueError(f"BatchAugment: flip_axes {list(axes)} has {bad}, expected axes in 0..{spatial_dims - 1}")
        self.flip_axes = axes
        for name, value in (("aug_prob", aug_prob), ("flip_prob", flip_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"BatchAugment: {name} must be in [0, 1], got {value!r}")
        for name, value in (("rotate_degrees", rotate_degrees), ("scale", scale), ("translate", translate)):
            if float(value) < 0:
                raise ValueError(f"BatchAugment: {name} must be >= 0, got {value!r}")
        if float(noise_std) < 0:
            raise ValueError(f"BatchAugment: noise_std must be >= 0, got {noise_std!r}")
        low, high = (float(g) for g in gamma)
        if not 0 < low <= high:
            raise ValueError(f"BatchAugment: gamma must be (low, high) with 0 < low <= high, got {gamma!r}")
        self.rotate = math.radians(float(rotate_degrees))
        self.scale = float(scale)
        self.translate = float(translate)
        self.noise_std = float(noise_std)
        self.gamma = (low, high)
        self.aug_prob = float(aug_prob)
        self.flip_prob = float(flip_prob)
        self.image_keys = (image_keys,) if isinstance(image_keys, str) else tuple(image_keys)
        self.label_keys = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)
        self.seed = int(seed)
        self.calls = 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spatial_dims={self.spatial_dims}, flip_axes={list(self.flip_axes)}, "
            f"rotate_degrees={math.degrees(self.rotate):g}, scale={self.scale}, translate={self.translate}, "
            f"noise_std={self.noise_std}, gamma={self.gamma}, aug_prob={self.aug_prob}, seed={self.seed})"
        )

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The seed and the number of batches augmented so far (plain ints: ``weights_only`` loads it)."""
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the random stream where :meth:`state_dict` left it."""
        self.seed = int(state["seed"])
        self.calls = int(state["calls"])

    def _generator(self, device: torch.device) -> torch.Generator:
        """This call's generator on ``device``, seeded from (seed, rank, calls): the state is the count."""
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        entropy = np.random.SeedSequence([self.seed, rank, self.calls]).generate_state(2, np.uint32)
        generator.manual_seed(int(entropy[0]) << 31 | int(entropy[1]) >> 1)  # < 2**63
        self.calls += 1
        return generator

    # -- augmentation ---------------------------------------------------------------------------
    def __call__(
        self,
        data: Mapping[str, Any],
        image_keys: Sequence[str] | None = None,
        label_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Augment the images and label maps of a batch; other keys are returned unchanged.

        Args:
            data: a collated batch: every image and label map ``(B, C, *spatial)``, all on one
                device with the same batch size (spatial sizes may differ between keys).
            image_keys: overrides the constructor's ``image_keys`` (``MultiTaskPrepareBatch``
                passes its input keys).
            label_keys: overrides the constructor's ``label_keys`` (the dense tasks).

        Returns:
            A new dict: augmented images (floating point, plain tensors), label maps with their
            own dtype and values drawn from the input (nearest neighbour), the other keys as given.

        Raises:
            KeyError: a key is not in ``data``.
            ValueError: a tensor that is not ``(B, C, *spatial)`` or whose batch size differs.
        """
        images = self.image_keys if image_keys is None else tuple(image_keys)
        labels = self.label_keys if label_keys is None else tuple(label_keys)
        missing = [k for k in images + labels if k not in data]
        if missing:
            raise KeyError(f"BatchAugment: batch lacks keys {missing} (has {sorted(map(str, data))})")
        out = dict(data)
        tensors = {k: _plain(data[k]) for k in images + labels}
        if not tensors:
            return out
        first = next(iter(tensors.values()))
        batch, device = first.shape[0], first.device
        for key, value in tensors.items():
            if value.ndim != self.spatial_dims + 2 or value.shape[0] != batch:
                raise ValueError(
                    f"BatchAugment: '{key}' has shape {tuple(value.shape)}, expected (B={batch}, C, "
                    f"{', '.join(['...'] * self.spatial_dims)}) for spatial_dims={self.spatial_dims}"
                )
        params = self._draw(batch, device)
        for key in images:
            tensors[key] = self._augment_image(tensors[key], params)
        for key in labels:
            tensors[key] = self._augment_label(tensors[key], params)
        out.update(tensors)
        return out

    def _draw(self, batch: int, device: torch.device) -> dict[str, Any]:
        """All random parameters of one batch, in a fixed order (the noise itself is drawn later)."""
        g = self._generator(device)
        dims = self.spatial_dims

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g, device=device)

        return {
            "generator": g,  # the noise itself is drawn from it later, per image key
            "flip": uniform(batch, len(self.flip_axes)) < self.flip_prob,
            "affine": uniform(batch) < self.aug_prob,
            "angles": (uniform(batch, 1 if dims == 2 else 3) * 2 - 1) * self.rotate,
            "zoom": 1 + (uniform(batch, dims) * 2 - 1) * self.scale,
            "shift": (uniform(batch, dims) * 2 - 1) * self.translate,
            "noise": uniform(batch) < self.aug_prob,
            "noise_std": uniform(batch) * self.noise_std,
            "contrast": uniform(batch) < self.aug_prob,
            "gamma": self.gamma[0] + uniform(batch) * (self.gamma[1] - self.gamma[0]),
        }

    def _flip(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        for i, axis in enumerate(self.flip_axes):
            mask = params["flip"][:, i].view(-1, *([1] * (x.ndim - 1)))
            x = torch.where(mask, x.flip(axis + 2), x)
        return x

    def _resample(self, x: torch.Tensor, params: Mapping[str, Any], mode: str) -> torch.Tensor:
        """The affine on the selected samples only: the others are returned bit-for-bit."""
        chosen = params["affine"].nonzero().flatten()
        if chosen.numel() == 0:
            return x
        theta = _theta(params["angles"][chosen], params["zoom"][chosen], params["shift"][chosen], tuple(x.shape[2:]))
        part = x.index_select(0, chosen)
        grid = F.affine_grid(theta.to(part.dtype), list(part.shape), align_corners=False)
        moved = F.grid_sample(part, grid, mode=mode, padding_mode="zeros", align_corners=False)
        return x.index_copy(0, chosen, moved)

    def _augment_image(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        x = self._flip(x, params)
        x = self._resample(x, params, "bilinear")  # trilinear for 5-D input
        x = self._noise(x, params)
        return self._contrast(x, params)

    def _augment_label(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        x = self._flip(x, params)
        if not bool(params["affine"].any()):
            return x
        dtype = x.dtype
        work = x if dtype in (torch.float32, torch.float64) else x.float()  # grid_sample needs float
        moved = self._resample(work, params, "nearest")
        return moved if moved.dtype == dtype else moved.to(dtype)

    def _noise(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        chosen = params["noise"].nonzero().flatten()
        if chosen.numel() == 0:
            return x
        part = x.index_select(0, chosen)
        noise = torch.randn(part.shape, generator=params["generator"], device=x.device, dtype=x.dtype)
        std = params["noise_std"][chosen].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return x.index_copy(0, chosen, part + noise * std)

    def _contrast(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        chosen = params["contrast"].nonzero().flatten()
        if chosen.numel() == 0:
            return x
        part = x.index_select(0, chosen)
        dims = tuple(range(1, x.ndim))
        low = part.amin(dim=dims, keepdim=True)
        span = part.amax(dim=dims, keepdim=True) - low
        gamma = params["gamma"][chosen].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        adjusted = ((part - low) / (span + _EPS)).pow(gamma) * span + low
        return x.index_copy(0, chosen, adjusted)


def _plain(value: Any) -> torch.Tensor:
    """A plain tensor (``MetaTensor`` metadata is dead weight in training and slows every op)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _theta(angles: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``affine_grid`` matrices ``(N, d, d + 1)`` for rotations, zooms and shifts given in voxel space.

    The output-to-input map is ``p_in = R Z p_out + t`` in voxel coordinates centred on the image
    (``t = shift * size``), as MONAI's ``RandAffine`` maps the output grid. ``affine_grid`` works in
    normalised coordinates ``n = 2 p / size`` (``align_corners=False``) with the axes in reverse
    order (x = last axis), so the matrix becomes ``S R Z S^-1`` with translation ``2 * shift``,
    then both are reversed; the scaling keeps rotations rigid on non-square images.
    """
    dims = len(size)
    linear = _rotation(angles, dims) @ torch.diag_embed(zoom)
    sizes = torch.tensor(size, dtype=linear.dtype, device=linear.device)
    linear = linear * (1.0 / sizes).view(1, dims, 1) * sizes.view(1, 1, dims)  # S M S^-1
    translation = 2 * shift
    linear = linear.flip(-1).flip(-2)
    return torch.cat([linear, translation.flip(-1).unsqueeze(-1)], dim=-1)


def _rotation(angles: torch.Tensor, dims: int) -> torch.Tensor:
    """Rotation matrices ``(N, d, d)``: one angle in 2D, one about each axis in 3D (composed in order)."""
    cos, sin = angles.cos(), angles.sin()
    if dims == 2:
        return torch.stack([torch.stack([cos[:, 0], -sin[:, 0]], -1), torch.stack([sin[:, 0], cos[:, 0]], -1)], -2)
    n = angles.shape[0]
    result = torch.eye(3, dtype=angles.dtype, device=angles.device).expand(n, 3, 3)
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]  # the plane rotated about `axis`
        rot = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(n, 1, 1)
        rot[:, a, a], rot[:, a, b] = cos[:, axis], -sin[:, axis]
        rot[:, b, a], rot[:, b, b] = sin[:, axis], cos[:, axis]
        result = result @ rot
    return result
