"""Peak memory of decoding one large image: the served decoder against the old one.

    .venv/bin/python benchmarks/bench_decode_memory.py

Each case runs in a fresh interpreter: read the file, note the peak RSS (VmHWM), decode it
once, note the peak RSS again; the difference is what one request's decoding costs. Images:
a 12000x12000 PNG (about 420 KB on disk: flat colour compresses well), a 50000x50000
bomb header, a 36 MP PNG, and phone-sized JPEGs (4032x3024 and 8000x6000 = 48 MP) made
from a real image. "old" is the decoder before the pixel limits and reduced decoding
(benchmarks/bench_photos.py's old_decode_image). By hand only: not an assertion.

Measured on the 2-core development machine (peak RSS growth, old -> served):
  12000x12000 PNG (435 KB)   554 MB, 3.0 s -> 1.4 MB, 0.015 s (413 from the header)
  50000x50000 header         DecompressionBombError (a 500) -> 1.0 MB (413)
  6000x6000 PNG (36 MP)      140 MB -> 139 MB (under the limit: decoded at full size)
  4032x3024 JPEG (427 KB)    49 MB, 0.19 s -> 2.9 MB, 0.03 s (draft: 1/8 scale)
  8000x6000 JPEG (48 MP)     186 MB, 0.63 s -> 4.7 MB, 0.06 s
"""
from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
from photos import png_chunk, png_with_header  # noqa: E402

SAMPLE = sorted((REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"
                 / "bicycle").glob("*.png"))[0]

MEASURE = r"""
import importlib.util, re, sys, time
def peak_mb():  # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's)
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
sys.path.insert(0, sys.argv[1] + "/benchmarks")
decoder, path = sys.argv[2], sys.argv[3]
if decoder == "old":
    from bench_photos import old_decode_image as decode
else:
    spec = importlib.util.spec_from_file_location("image_decoding", sys.argv[1] + "/pipelines/jobs/image_decoding.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    decode = module.decode_image
data = open(path, "rb").read()
before = peak_mb()
started = time.perf_counter()
try:
    decode(data); outcome = "decoded"
except Exception as exc:
    outcome = f"{type(exc).__name__} {getattr(exc, 'status_code', '')}".strip()
seconds = time.perf_counter() - started
after = peak_mb()
print(f"{after - before:.1f} {seconds:.3f} {outcome}")
"""


def flat_png(width: int, height: int) -> bytes:
    """An RGB PNG of one flat colour, compressed row by row (never held as a raster)."""
    compressor = zlib.compressobj(9)
    row = b"\0" + b"\x80" * 3 * width
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def photo_jpeg(size: tuple[int, int], path: Path) -> Path:
    Image.open(SAMPLE).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
        path, format="JPEG", quality=90)
    return path


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = {}
        cases["12000x12000 PNG"] = folder / "flat-12000.png"
        cases["12000x12000 PNG"].write_bytes(flat_png(12000, 12000))
        cases["6000x6000 PNG (36 MP)"] = folder / "flat-6000.png"
        cases["6000x6000 PNG (36 MP)"].write_bytes(flat_png(6000, 6000))
        cases["50000x50000 header"] = folder / "bomb.png"
        cases["50000x50000 header"].write_bytes(png_with_header(50000, 50000))
        cases["4032x3024 JPEG"] = photo_jpeg((4032, 3024), folder / "phone-12mp.jpg")
        cases["8000x6000 JPEG (48 MP)"] = photo_jpeg((8000, 6000), folder / "phone-48mp.jpg")
        print("image | file KB | decoder | peak RSS growth MB | seconds | outcome")
        for name, path in cases.items():
            for decoder in ("old", "served"):
                out = subprocess.run([sys.executable, "-c", MEASURE, str(REPO_ROOT), decoder,
                                      str(path)], capture_output=True, text=True, check=True)
                growth, seconds, outcome = out.stdout.split(maxsplit=2)
                print(f"{name} | {path.stat().st_size // 1024} | {decoder} | {growth} | "
                      f"{seconds} | {outcome.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
