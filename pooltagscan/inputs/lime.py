"""LiME dumps (Linux Memory Extractor, also used for Android and some Windows tools).

A LiME file is a chain of ranges, each a 32-byte header (magic "EMiL", version 1, first
and last physical address, reserved) followed by the range's bytes. Volatility 3's
LimeLayer reads the chain; we take its physical map and mmap the bytes.
"""

from __future__ import annotations

from typing import Any

from pooltagscan.files import InputFile
from pooltagscan.inputs import volmap
from pooltagscan.inputs.base import MemoryImage


def open_lime(source: InputFile) -> MemoryImage:
    image = volmap.physical_image(source, "lime", _build_layer, "LiME dump")
    image.details["ranges"] = image.details.pop("segments")
    return image


def _build_layer(context: Any, base: str) -> Any:
    from volatility3.framework.layers import lime

    return volmap.stack_layer(context, lime.LimeLayer, base, "lime")
