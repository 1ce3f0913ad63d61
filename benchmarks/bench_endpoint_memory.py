"""The local endpoint's peak memory (RSS of the server process) idle, under ordinary
traffic, under 4 concurrent 12000x12000 PNGs, and under decompression bombs.

    .venv/bin/python benchmarks/bench_endpoint_memory.py [--model-tar PATH]
                                                         [--code-ref GITREF] [--json]

The endpoint runs as `workflow run` runs it: its own process (EndpointProcess), over HTTP
on 127.0.0.1. Peak RSS per scenario is the kernel's high-water mark (VmHWM, reset before
each scenario through /proc/PID/clear_refs), checked against a 5 ms sampler of VmRSS.
Goal (issue 8): growth over idle under 100 MB in every scenario.

--code-ref: serve the code/inference.py, image_decoding.py and scones_net.py of that ref (e.g.
`serve-decode`) instead of this checkout's, to compare serving code on the same weights.
Without --model-tar a small model is trained first (2 epochs on 80 images, ~20 s).
By hand only: figures, not assertions.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scones.config import load_config  # noqa: E402
from scones.console import format_table  # noqa: E402
from scones.local.endpoint.process import EndpointProcess  # noqa: E402

SAMPLE_DATA = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"
JOBS = REPO_ROOT / "pipelines" / "jobs"
SERVING_CODE = ("inference.py", "image_decoding.py", "scones_net.py")
GOAL_MB = 100


# ----------------------------------------------------------------------------- payloads


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """An RGB PNG of width x height, all black; `rows`: only that many rows of pixel data
    (a header that promises more than the data holds: a decompression bomb's shape)."""
    row = b"\0" + b"\0" * (3 * width)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def payloads() -> dict[str, list[bytes]]:
    photos = sorted(SAMPLE_DATA.glob("*/*.png"))
    if not photos:
        sys.exit(f"no sample images under {SAMPLE_DATA}")
    huge = png(12000, 12000)
    return {
        "32 photos, 4 at a time": [p.read_bytes() for p in photos[:32]],
        "4 x 12000x12000 PNG, at once": [huge] * 4,
        "4 x 50000x50000 header (bomb), at once": [png(50000, 50000, rows=16)] * 4,
        "4 x 30000x30000 PNG (bomb), at once": [png(30000, 30000)] * 4,
        "4 x 7 MB body, at once": [huge + b"\0" * (7 * 1024 * 1024 - len(huge))] * 4,
    }


# ------------------------------------------------------------------------------- memory


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class Sampler:
    def __init__(self, pid: int):
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            time.sleep(0.005)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- the model


def train_small_model(work: Path) -> Path:
    images = work / "images"
    for name in ("bicycle", "motorcycle"):
        (images / name).mkdir(parents=True)
        for path in sorted((SAMPLE_DATA / name).glob("*.png"))[:40]:
            shutil.copy2(path, images / name / path.name)
    run = lambda script, *args: subprocess.run(  # noqa: E731
        [sys.executable, str(JOBS / script), *map(str, args)], check=True,
        capture_output=True)
    run("preprocess.py", "--input-dir", images, "--output-dir", work / "processed")
    run("train.py", "--train", work / "processed" / "train",
        "--validation", work / "processed" / "validation", "--model-dir", work / "model",
        "--output-data-dir", work / "output", "--epochs", 2, "--width", 8)
    return pack(work / "model", work / "model.tar.gz")


def pack(model_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            if "__pycache__" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


def with_code_of(model_tar: Path, ref: str, work: Path) -> Path:
    """A copy of model_tar whose serving code is that of git ref `ref`."""
    model_dir = work / "repacked"
    with tarfile.open(model_tar) as tar:
        tar.extractall(model_dir, filter="data")
    for name in SERVING_CODE:
        shown = subprocess.run(["git", "-C", str(REPO_ROOT), "show",
                                f"{ref}:pipelines/jobs/{name}"], capture_output=True)
        if shown.returncode != 0 and name == "image_decoding.py":
            continue  # a ref from before the one decoder: inference.py holds its own
        shown.check_returncode()
        (model_dir / "code" / name).write_bytes(shown.stdout)
    return pack(model_dir, work / "repacked.tar.gz")


# ------------------------------------------------------------------------------ traffic


def invoke(url: str, body: bytes) -> tuple[int, float]:
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "image/png"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    except (ConnectionError, urllib.error.URLError):
        status = 0  # the connection dropped (e.g. a 413 closed before the upload ended)
    return status, time.perf_counter() - started


def scenario(endpoint: EndpointProcess, bodies: list[bytes], idle_kb: int) -> dict:
    exact = reset_peak(endpoint.pid)
    with Sampler(endpoint.pid) as sampler, ThreadPoolExecutor(4) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda b: invoke(endpoint.url, b), bodies))
        wall = time.perf_counter() - started
    peak_kb = max(status_kb(endpoint.pid, "VmHWM") if exact else 0, sampler.peak_kb)
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {"Requests": len(bodies), "Statuses": statuses,
            "SecondsPerRequest": sum(s for _, s in results) / len(results),
            "Wall": wall, "PeakMB": peak_kb / 1024, "GrowthMB": (peak_kb - idle_kb) / 1024,
            "BodyMB": max(map(len, bodies)) / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-tar", type=Path, help="model.tar.gz to serve")
    parser.add_argument("--code-ref", help="serve the inference.py of this git ref")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        work = Path(tmp)
        model_tar = args.model_tar or train_small_model(work / "train")
        if args.code_ref:
            model_tar = with_code_of(model_tar, args.code_ref, work)
        config = load_config("local", {"local.workspace": str(work / "ws")})
        bodies = payloads()
        with EndpointProcess(config, model_tar=model_tar) as endpoint:
            for body in bodies["32 photos, 4 at a time"][:4]:  # warm-up: torch's first calls
                invoke(endpoint.url, body)
            time.sleep(0.5)
            idle_kb = status_kb(endpoint.pid, "VmRSS")
            rows = {name: scenario(endpoint, b, idle_kb) for name, b in bodies.items()}
            after_kb = status_kb(endpoint.pid, "VmRSS")

    code = f"inference.py of {args.code_ref}" if args.code_ref else \
        "inference.py of this checkout"
    if args.json:
        print(json.dumps({"Code": code, "IdleMB": idle_kb / 1024, "AfterMB": after_kb / 1024,
                          "Scenarios": rows}, indent=2))
        return 0
    print(f"endpoint RSS idle {idle_kb / 1024:.0f} MB ({code}); after all scenarios "
          f"{after_kb / 1024:.0f} MB; goal: growth < {GOAL_MB} MB")
    print(format_table(
        ["scenario", "statuses", "s/request", "peak MB", "growth MB", "goal"],
        [(name, " ".join(f"{k}x{v}" for k, v in sorted(r["Statuses"].items())),
          f"{r['SecondsPerRequest']:.2f}", f"{r['PeakMB']:.0f}", f"{r['GrowthMB']:+.0f}",
          "met" if r["GrowthMB"] < GOAL_MB else "MISSED") for name, r in rows.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
