"""Test images made from the shared real 32x32 images: photo-sized versions of them, and
hostile PNGs (a decompression-bomb header, appended bytes)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def real_image_path(sample_data_dir: Path, class_name: str, index: int = 0) -> Path:
    return sorted((sample_data_dir / class_name).glob("*.png"))[index]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def upscaled_photo(source: Path, size: tuple[int, int], fmt: str, folder: Path) -> Path:
    """The real 32x32 image at `source` blown up to `size` (bicubic), written under folder
    as a PNG or a quality-90 JPEG (as a phone writes one)."""
    image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    suffix = {"PNG": "png", "JPEG": "jpg"}[fmt]
    path = folder / f"{source.stem}-{size[0]}x{size[1]}.{suffix}"
    path.write_bytes(encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {})))
    return path


def png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + chunk_type + data
            + struct.pack(">I", zlib.crc32(chunk_type + data)))


def png_with_header(width: int, height: int) -> bytes:
    """A well-formed PNG that declares width x height RGB pixels but carries one row: what
    a decompression bomb looks like from its header (its pixels are never needed)."""
    row = b"\0" + b"\0" * 3 * min(width, 4096)
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(row)) + png_chunk(b"IEND", b""))


def png_padded_to(png: bytes, size: int) -> bytes:
    """The same PNG grown to exactly `size` bytes by a private ancillary chunk before
    IEND (decoders skip it): still one whole, valid PNG."""
    iend = png.rindex(b"IEND") - 4
    padding = size - len(png) - 12
    assert padding >= 0, f"{len(png)}-byte PNG cannot be padded to {size}"
    return png[:iend] + png_chunk(b"scNs", b"\0" * padding) + png[iend:]
