"""Sizes given as text (``"8GiB"``, ``"500MB"``, ``"4G"``): one reading for every option that takes one.

pydantic's ``ByteSize`` does the parsing: IEC units are binary (``8GiB`` = 8 * 2**30), SI units
decimal (``500MB`` = 500 * 10**6), a plain number is bytes. The one addition: a bare letter
(``4G``, ``512M``, ``8K``) means the binary unit, as in ``free -h``, ``ulimit`` and the examples
medmtl has always documented; ``ByteSize`` alone would read ``4G`` as 4 * 10**9.
"""

from __future__ import annotations

import re

from pydantic import ByteSize, TypeAdapter, ValidationError

__all__ = ["parse_byte_size"]

_ADAPTER = TypeAdapter(ByteSize)
_BARE_LETTER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe])\s*$", re.IGNORECASE)


def parse_byte_size(value: int | float | str, where: str = "size") -> int:
    """Bytes from a number or a text such as ``"12GiB"``, ``"512 MB"`` or ``"4G"``.

    Args:
        value: bytes, or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, or K, M, G, T
            for the binary units).
        where: the option or variable the value came from, for the error message.

    Returns:
        The number of bytes (not checked for being positive: callers say what they accept).

    Raises:
        ValueError: naming ``where`` when ``value`` is not a size (booleans included).

    Example::

        parse_byte_size("8GiB")  # 8589934592
        parse_byte_size("4G")  # 4294967296
        parse_byte_size("500MB")  # 500000000
    """
    if not isinstance(value, bool):
        text = value
        if isinstance(value, str) and (bare := _BARE_LETTER.match(value)):
            text = f"{bare[1]}{bare[2]}iB"
        try:
            return int(_ADAPTER.validate_python(text))
        except ValidationError:
            pass
    raise ValueError(
        f"{where}={value!r} is not a size: give bytes (2147483648) or a number with a unit "
        "(8GiB, 500MB, or 4G for 4 GiB)"
    )
