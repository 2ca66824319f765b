"""A name -> builder registry for backbones, so configs and the CLI can say ``"unet"`` or ``"densenet121"``.

Why: bundle configs can always build a backbone class directly with ``_target_``; the registry adds
short names and presets (``resnet18``, ``densenet121``) without a chain of ``if name == ...``. As in
``torchvision/models/_api.py::register_model``, registering the same name twice is an error, so two
modules cannot silently shadow each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from monai.utils import look_up_option
from torch import nn

__all__ = ["register_backbone", "build_backbone", "list_backbones"]

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}

T = TypeVar("T", bound=Callable[..., nn.Module])


def register_backbone(name: str) -> Callable[[T], T]:
    """Class/function decorator that registers a backbone builder under ``name``.

    Args:
        name: the registry key (``build_backbone(name, ...)``).

    Returns:
        A decorator returning the builder unchanged.

    Raises:
        ValueError: if ``name`` is empty or already registered.

    Example::

        @register_backbone("tiny_unet")
        def tiny_unet(**kwargs):
            return BasicUNetBackbone(features=(4, 4, 8, 8, 16, 4), **kwargs)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_backbone: name must be a non-empty string, got {name!r}")

    def decorator(builder: T) -> T:
        if name in _BACKBONES:
            previous = _BACKBONES[name]
            raise ValueError(
                f"backbone '{name}' is already registered by {previous.__module__}.{previous.__qualname__}; "
                f"cannot register {builder.__module__}.{builder.__qualname__} under the same name"
            )
        _BACKBONES[name] = builder
        return builder

    return decorator


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword arguments ``kwargs``.

    Args:
        name: a key of :func:`list_backbones`.
        kwargs: constructor arguments of that backbone (``spatial_dims``, ``in_channels``, ...).

    Returns:
        The backbone module.

    Raises:
        ValueError: if ``name`` is unknown (the message lists the known names and the closest match).

    Example::

        net = build_backbone("unet", spatial_dims=3, in_channels=1, features=(8, 8, 16, 32, 64, 8))
    """
    builder = look_up_option(name, _BACKBONES)
    return builder(**kwargs)


def list_backbones() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(_BACKBONES)
