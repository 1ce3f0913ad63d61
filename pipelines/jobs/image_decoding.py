"""The one image decoder: PNG/JPEG bytes -> uint8 32 x 32 x 3 RGB, for training and serving.

preprocess.py (a Processing job shipped with this folder as its source_dir) decodes the
training images with it, and inference.py (in the model archive's code/, next to this
file) decodes every request with it, so a served image is decoded exactly as a training
image was. Standalone on purpose (numpy and Pillow only): both run inside SageMaker's
containers, and both import it by its file, never through a package.

Rules, each the same at every image size:
- orientation: a camera's EXIF orientation (tag 274) is applied, as ImageOps.exif_transpose
  does, so a phone photo stored sideways is read upright;
- depth: 16-bit greyscale PNGs (modes I;16, I;16B, I) are scaled to 8 bits (v / 257,
  rounded), never clipped; 16-bit RGB/RGBA PNGs Pillow itself reads at 8 bits;
- alpha: a transparent or partly transparent image is resized with its alpha (Pillow
  resizes RGBA premultiplied) and composited on ALPHA_BACKGROUND at the final size; that
  is the same as compositing first and resizing, without a full-size composite copy.
"""
from __future__ import annotations

import io
import re
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

# The largest raster decoded at full size: 40 MP is 160 MB as RGBA, the most one request
# may cost. Larger PNGs (a 445 KB PNG can declare 12000x12000) are refused from the header,
# before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000
# JPEGs are decoded at 1/8 scale (DCT scaling, Image.draft), so one of 80 MP (a 48-64 MP
# phone photo) costs at most 1.25 MP of raster. 80 MP stays under Pillow's own
# decompression-bomb warning (89.5 MP), so an accepted JPEG never trips it.
MAX_JPEG_PIXELS = 80_000_000
# Downscaling filter: Lanczos, antialiased (Pillow widens a filter's support by the
# reduction factor, so every source pixel counts). Measured in benchmarks/bench_photos.py
# on 200 held-out images blown up (bicubic or Lanczos) to 640x480 and 4032x3024: it brings
# a photo closest to its 32x32 original (pixel error 1.9-2.5 against 2.3-5.0, probability
# drift 0.013-0.026 against 0.025-0.068 for box, bilinear and bicubic) and agrees with the
# 32x32 class most often (97-99.5%, the others 93-97%). The whole image is squashed to
# the square, never cropped or letterboxed: training images are whole scenes at 32x32
# with no bars, and a centre crop agreed less (95.5-96.5%).
RESIZE_FILTER = Image.Resampling.LANCZOS
# Integer pre-reduction (Image.reduce, a box average) down to at least this many times the
# target size before the final filter: cheap, and the full-size raster is freed early.
REDUCE_TO_MULTIPLE = 4
# What shows through transparent pixels: white, as image viewers and web pages show a
# transparent product photo. (The training images are all opaque.)
ALPHA_BACKGROUND = (255, 255, 255)
DECODED_FORMATS = ("PNG", "JPEG")  # never hand a request to Pillow's other parsers
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientation -> the transpose that makes the picture upright (ImageOps.exif_transpose's
# table). Applied to the final small image: every transpose commutes with a resize to a
# square, so the full-size raster is never copied to turn it.
EXIF_ORIENTATION = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# After a JPEG scan: a marker is 0xFF (fill bytes allowed) then a code that is neither a
# stuffed zero nor a restart marker (those belong to the entropy-coded data).
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# Pillow names its in-memory file in some messages ("cannot identify image file
# <_io.BytesIO object at 0x7f...>"): an answer says "the image" instead.
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


class ImageDecodeError(ValueError):
    """Bytes that are not one usable PNG/JPEG: status_code 400 (not one whole image, or
    bytes after its end) or 413 (over the pixel limits)."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message


def _png_end(data: bytes) -> int | None:
    """Offset just after the IEND chunk, or None when the chunks do not reach one."""
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunk_type = data[position + 4:position + 8]
        position += 12 + length
        if chunk_type == b"IEND":
            return position if position <= len(data) else None
    return None


def _jpeg_end(data: bytes, start: int = 0) -> int | None:
    """Offset just after the EOI marker that ends the JPEG starting at `start`, or None
    when not found.

    Walks the marker segments by their lengths (so a thumbnail's own EOI inside EXIF is
    skipped) and each entropy-coded scan to its next marker.
    """
    if data[start:start + 2] != b"\xff\xd8":
        return None
    position = start + 2  # after SOI
    while position < len(data):
        if data[position] != 0xFF:
            return None
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            return None
        marker = data[position]
        position += 1
        if marker == 0xD9:  # EOI
            return position
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            continue
        if position + 2 > len(data):
            return None
        position += int.from_bytes(data[position:position + 2], "big")
        if marker == 0xDA:  # SOS: the entropy-coded scan follows the header
            found = _JPEG_MARKER_IN_SCAN.search(data, position)
            if found is None:
                return None
            position = found.end() - 2  # at the last 0xFF before the marker code
    return None


def _trailing_bytes(data: bytes, image: Image.Image) -> int:
    """How many bytes follow the image's end marker (0 when none or not found: a file cut
    short is the decoder's to report). An MPO (a camera's JPEG with more pictures declared
    in its MP index: depth maps, HDR gain maps) ends after its last declared picture."""
    if image.format == "PNG":
        end = _png_end(data)
    else:
        end = 0
        pictures = image.mpinfo.get(0xB002, []) if image.format == "MPO" else []
        for _ in range(max(1, len(pictures))):
            end = _jpeg_end(data, end)
            if end is None:
                break
    return 0 if end is None else len(data) - end


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION) or 1)
    except (ValueError, TypeError, OSError, SyntaxError, struct.error):
        return 1  # an unreadable EXIF block says nothing about orientation


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit L, scaled (v / 257, rounded) row block by row block
    so the temporary stays small."""
    values = np.asarray(image)
    out = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, values.shape[0], 1024):
        block = np.clip(values[start:start + 1024].astype(np.uint32), 0, 65535)
        out[start:start + 1024] = (block + 128) // 257
    return Image.fromarray(out, "L")


def _colour_with_alpha(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has any transparency (alpha band or tRNS)."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = _eight_bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        return image if image.mode == "RGBA" else image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _sanitised(exc: BaseException) -> str:
    return _OBJECT_REPR.sub("the image", str(exc))


def decode_image(data: bytes, image_size: int = 32) -> np.ndarray:
    """PNG/JPEG bytes (any colour mode, depth, orientation and size) -> uint8
    image_size x image_size x 3 RGB.

    Raises ImageDecodeError(message, status_code): 400 for bytes that are not one whole
    PNG or JPEG (trailing bytes after its end included), 413 for images over the pixel
    limits. Memory is bounded by the limits: JPEGs decode at 1/8 scale, other images are
    pre-reduced by an integer factor before the final resize.
    """
    try:
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as image:
            width, height = image.size
            is_jpeg = image.format in ("JPEG", "MPO")  # MPO: a JPEG with more pictures
            limit = MAX_JPEG_PIXELS if is_jpeg else MAX_IMAGE_PIXELS
            if width * height > limit:
                raise ImageDecodeError(
                    f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                    f"{limit / 1e6:.0f} MP limit for {image.format}: send it smaller", 413)
            extra = _trailing_bytes(data, image)
            if extra:
                raise ImageDecodeError(
                    f"{extra} bytes follow the end of the {image.format} image: send the "
                    f"image alone (re-save it to drop appended data)", 400)
            if is_jpeg and (width, height) != (image_size, image_size):
                image.draft("RGB", (image_size, image_size))  # DCT scaling: up to 1/8
            image.load()
            orientation = _orientation(image)
            picture = _colour_with_alpha(image)
            if picture.size != (image_size, image_size):
                factors = tuple(max(1, side // (image_size * REDUCE_TO_MULTIPLE))
                                for side in picture.size)
                if factors != (1, 1):
                    picture = picture.reduce(factors)
                picture = picture.resize((image_size, image_size), RESIZE_FILTER)
            if picture.mode == "RGBA":
                background = Image.new("RGBA", picture.size, ALPHA_BACKGROUND + (255,))
                picture = Image.alpha_composite(background, picture).convert("RGB")
            if orientation in _UPRIGHT:
                picture = picture.transpose(_UPRIGHT[orientation])
            return np.asarray(picture, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"image is over the pixel limit ({MAX_IMAGE_PIXELS / 1e6:.0f} MP, "
            f"{MAX_JPEG_PIXELS / 1e6:.0f} MP for JPEG): {_sanitised(exc)}", 413) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a readable PNG/JPEG image ({len(data)} bytes): neither "
                               "format's signature opens it", 400) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(f"not a readable PNG/JPEG image ({len(data)} bytes): "
                               f"{_sanitised(exc)}", 400) from None
