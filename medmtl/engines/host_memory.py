"""Keep freed CPU memory in the process: CPU training and inference stop page-faulting every step.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every request above its mmap
threshold (dynamic, at most 32 MiB on 64-bit Linux) with fresh pages from ``mmap`` and hands them
back with ``munmap`` on free. A training step allocates and frees the same large activations and
gradients again and again (a batch of 16 2D images at 128 px with 32 channels is 32 MiB per
activation; any 3D patch batch is more), so every step faults all of those pages in again and the
kernel zeroes them, page by page, on every step (the minor page faults a step counts).

:func:`tune_host_allocator` tells glibc (``mallopt``) to serve large blocks from its heap
(``M_MMAP_MAX = 0``) and to keep freed memory instead of trimming it (``M_TRIM_THRESHOLD``): the
second step reuses the first step's pages. Measured on a 2-core CPU (``benchmarks/host_allocator.py``,
README "CPU allocator"): a 2D training step of the ultrasound bundle's UNet at 128 px, batch 16,
1.36x faster (the whole bundle 1.52x); a 3D training step at 96^3 1.56x; 3D sliding-window inference
1.63x; page faults per step drop from hundreds of thousands to none. Preloading jemalloc or tcmalloc
(``LD_PRELOAD``) is the usual alternative (not measured here); this needs no extra library.

The cost: memory freed by the process stays assigned to it until it exits, and kept blocks are
split for other sizes, so the peak resident size grows (by 14-56 % on the paths above). That suits
a training or inference process with RAM to spare; it is why this is a call the bundles make for
CPU runs (``"tune_host_allocator": true``, ``--tune_host_allocator False`` to keep glibc's
behaviour) and not something importing medmtl does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import torch

__all__ = ["tune_host_allocator"]

logger = logging.getLogger(__name__)

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the largest value mallopt accepts for M_TRIM_THRESHOLD is the largest int: ~2 GiB kept
_KEEP_FREED_BYTES = 2**31 - 1

_tuned = False


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (``mallopt`` with glibc's parameter numbers), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it (musl, e.g. Alpine, does not)
    except (OSError, AttributeError):
        return None
    return libc


def tune_host_allocator(device: torch.device | str | None = None, enabled: bool = True) -> bool:
    """Make glibc reuse freed memory for large CPU tensors; returns whether the allocator is tuned.

    Args:
        device: the run's device. Only a CPU run is tuned: on a GPU the large tensors live in
            PyTorch's CUDA caching allocator, and the host side allocates little per step.
            ``None`` tunes regardless.
        enabled: ``False`` does nothing (the bundles' ``tune_host_allocator`` setting).

    Returns:
        ``True`` when the allocator is tuned (now or by an earlier call); ``False`` when disabled,
        not a CPU run, or not glibc (macOS, musl): then the C library keeps its own behaviour.
    """
    global _tuned
    if not enabled or (device is not None and torch.device(device).type != "cpu"):
        return False
    if _tuned:
        return True
    libc = _glibc()
    if libc is None:
        logger.debug("tune_host_allocator: not glibc, left as is")
        return False
    # mallopt returns 1 on success, 0 on error
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)):
        logger.warning("tune_host_allocator: glibc refused mallopt; CPU steps keep page-faulting large tensors")
        return False
    _tuned = True
    logger.info("CPU allocator tuned: freed memory is reused, not returned to the OS (tune_host_allocator)")
    return True
