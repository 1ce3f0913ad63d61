"""Preprocess: raw images -> stratified train / validation / test splits as .npz files.

Runs as a SageMaker Processing job (defaults are the container's /opt/ml/processing paths),
under the local runner, or by hand. Self-contained on purpose (stdlib, numpy, Pillow only):
a processing job uploads this single file, so it cannot import its neighbours.

Input (--input-dir) is one of:
  * an image-folder data set: one subfolder per class, PNG/JPEG files, any colour mode and
    size (area-downscaled to 32x32 by the decoder inference.py serves with); a file the
    decoder refuses (not one whole PNG/JPEG, bytes after its end, over the pixel limits:
    a decompression bomb) counts as one corrupt image, listed in the report;
  * the official CIFAR-100 python archive `cifar-100-python.tar.gz` inside the input dir;
  * its extracted folder `cifar-100-python/` (the input dir itself, or inside it).
A data snapshot (scones/snapshots.py: manifest.json beside the files it lists, each with its
SHA-256) is read as the layout of its files, after every file is checked against the manifest:
a missing, altered or unlisted file fails the job, so a snapshot trains exactly what it names.
From CIFAR-100 only the `train` file is read: the `test` file is CIFAR's own hold-out and
stays out of the pipeline's splits.

Outputs under --output-dir: train/data.npz, validation/data.npz, test/data.npz (images
uint8 N x 32 x 32 x 3, labels int64, class_names, filenames) and report/report.json.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import re
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "validation", "test")
CIFAR_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR_FOLDER = "cifar-100-python"


class PreprocessError(Exception):
    """Bad input or a failed data-quality check; the message says what and where."""


class UnreadableImage(ValueError):
    """One image file cannot be used (not a whole PNG/JPEG, or over the pixel limits): it
    is counted as corrupt, never fatal on its own. status_code mirrors inference.py's."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


_DecodeError = UnreadableImage  # what the shared decoding block raises, here


# --- reading images --------------------------------------------------------------------

# --- image decoding: this block is identical in inference.py and preprocess.py ---------
# (preprocess.py ships as a single file, so the decoder is written twice; a test compares
# the two blocks' text, so a served image is decoded exactly as a training image was.)

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
DECODED_FORMATS = ("PNG", "JPEG")  # never hand a request to Pillow's other parsers
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# After a JPEG scan: a marker is 0xFF (fill bytes allowed) then a code that is neither a
# stuffed zero nor a restart marker (those belong to the entropy-coded data).
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


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


def decode_image(data: bytes, image_size: int = 32) -> np.ndarray:
    """PNG/JPEG bytes (any colour mode, any size) -> uint8 image_size x image_size x 3 RGB.

    Raises _DecodeError(message, status_code): 400 for bytes that are not one whole PNG or
    JPEG (trailing bytes after its end included), 413 for images over the pixel limits.
    Memory is bounded by the limits: JPEGs decode at 1/8 scale, other images are
    pre-reduced by an integer factor before the final resize.
    """
    try:
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as image:
            width, height = image.size
            is_jpeg = image.format in ("JPEG", "MPO")  # MPO: a JPEG with more pictures
            limit = MAX_JPEG_PIXELS if is_jpeg else MAX_IMAGE_PIXELS
            if width * height > limit:
                raise _DecodeError(
                    f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                    f"{limit / 1e6:.0f} MP limit for {image.format}: send it smaller", 413)
            extra = _trailing_bytes(data, image)
            if extra:
                raise _DecodeError(
                    f"{extra} bytes follow the end of the {image.format} image: send the "
                    f"image alone (re-save it to drop appended data)", 400)
            if is_jpeg and (width, height) != (image_size, image_size):
                image.draft("RGB", (image_size, image_size))  # DCT scaling: up to 1/8
            image.load()
            if image.mode not in ("RGB", "RGBA", "L", "LA") or "transparency" in image.info:
                # Palette/LA images with transparency convert via RGBA to keep colours right.
                image = image.convert("RGBA") if "transparency" in image.info else image
                image = image.convert("RGB")
            if image.size != (image_size, image_size):
                factors = tuple(max(1, side // (image_size * REDUCE_TO_MULTIPLE))
                                for side in image.size)
                if factors != (1, 1):
                    image = image.reduce(factors)
                image = image.convert("RGB").resize((image_size, image_size), RESIZE_FILTER)
            elif image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _DecodeError(f"image is over the pixel limit ({MAX_IMAGE_PIXELS / 1e6:.0f} MP, "
                           f"{MAX_JPEG_PIXELS / 1e6:.0f} MP for JPEG): {exc}", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError,
            struct.error) as exc:
        if isinstance(exc, _DecodeError):
            raise
        raise _DecodeError(f"not a readable PNG/JPEG image ({len(data)} bytes): {exc}",
                           400) from None
# --- end of the image decoding block ---------------------------------------------------


def read_image_folder(root: Path, classes: list[str]):
    """-> (images, labels, filenames, corrupt) from root/<class>/*.png|jpg|jpeg."""
    missing = [name for name in classes if not (root / name).is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise PreprocessError(
            f"{root}: no folder for class(es) {', '.join(missing)} "
            f"(found folders: {', '.join(present) or 'none'})")
    images, labels, filenames, corrupt = [], [], [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            relative = f"{name}/{path.name}"
            try:
                images.append(decode_image(path.read_bytes()))
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                corrupt.append({"file": relative, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            labels.append(label)
            filenames.append(relative)
    return images, labels, filenames, corrupt


# --- reading CIFAR-100 -----------------------------------------------------------------

def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR pickle may name: numpy's own array reconstruction.

    Archives pickled by numpy 1.x name numpy.core.multiarray; numpy 2 names numpy._core.
    Both map to the installed functions, resolved here rather than imported by name.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    reconstruct = multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, bytes, numbers and numpy arrays; nothing else.

    A pickle names callables (via GLOBAL / STACK_GLOBAL) that unpickling then calls; a
    malicious archive can name os.system. Every name outside numpy's array reconstruction
    is refused.
    """

    ALLOWED = _numpy_reconstructors()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def load_cifar_pickle(data: bytes, where: str) -> dict:
    """Unpickle one CIFAR file (Python 2 pickle: bytes keys) with the restricted unpickler."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise PreprocessError(f"{where}: not a safe CIFAR-100 pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise PreprocessError(f"{where}: not a readable CIFAR-100 pickle: {exc}") from None
    if not isinstance(obj, dict):
        raise PreprocessError(f"{where}: expected a dict, found {type(obj).__name__}")
    # Python 2 pickles give bytes keys; normalise so both layouts read the same.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def read_cifar(meta: dict, train: dict, classes: list[str], where: str):
    """-> (images, labels, filenames, corrupt) for the named fine classes of CIFAR's train file."""
    for key, d in (("fine_label_names", meta), ("data", train), ("fine_labels", train)):
        if key not in d:
            raise PreprocessError(f"{where}: CIFAR-100 file lacks the {key!r} entry")
    fine_names = [_text(n) for n in meta["fine_label_names"]]
    unknown = [name for name in classes if name not in fine_names]
    if unknown:
        raise PreprocessError(f"{where}: class(es) {', '.join(unknown)} are not CIFAR-100 fine labels")
    data = np.asarray(train["data"])
    fine_labels = np.asarray(train["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE \
            or len(fine_labels) != len(data):
        raise PreprocessError(
            f"{where}: 'data' must be uint8 N x 3072 with one fine label per row "
            f"(got {data.dtype} {data.shape}, {len(fine_labels)} labels)")
    names = train.get("filenames")
    if names is None or len(names) != len(data):
        names = [f"cifar_train_{i:05d}.png" for i in range(len(data))]
    images, labels, filenames = [], [], []
    for label, name in enumerate(classes):
        rows = np.flatnonzero(fine_labels == fine_names.index(name))
        # CIFAR rows are channel-planar (1024 R, 1024 G, 1024 B); make them H x W x 3.
        block = data[rows].reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
        images.extend(np.ascontiguousarray(block))
        labels.extend([label] * len(rows))
        filenames.extend(f"{name}/{_text(names[i])}" for i in rows)
    return images, labels, filenames, []


def _read_cifar_archive(path: Path, classes: list[str]):
    # Read the members into memory: never extract an archive's paths onto the disk.
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {m.name: m for m in archive.getmembers() if m.isfile()}
            wanted = {}
            for leaf in ("meta", "train"):
                member = members.get(f"{CIFAR_FOLDER}/{leaf}")
                if member is None:
                    raise PreprocessError(f"{path}: archive has no {CIFAR_FOLDER}/{leaf} file")
                wanted[leaf] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PreprocessError(f"{path}: not a readable .tar.gz archive: {exc}") from None
    meta = load_cifar_pickle(wanted["meta"], f"{path}:{CIFAR_FOLDER}/meta")
    train = load_cifar_pickle(wanted["train"], f"{path}:{CIFAR_FOLDER}/train")
    return read_cifar(meta, train, classes, str(path))


def _read_cifar_folder(folder: Path, classes: list[str]):
    for leaf in ("meta", "train"):
        if not (folder / leaf).is_file():
            raise PreprocessError(f"{folder}: CIFAR-100 folder has no '{leaf}' file")
    meta = load_cifar_pickle((folder / "meta").read_bytes(), str(folder / "meta"))
    train = load_cifar_pickle((folder / "train").read_bytes(), str(folder / "train"))
    return read_cifar(meta, train, classes, str(folder))


def read_input(input_dir: Path, classes: list[str]):
    """Detect the input layout -> (images, labels, filenames, corrupt, source_type)."""
    if not input_dir.is_dir():
        raise PreprocessError(f"{input_dir}: input folder not found")
    if (input_dir / CIFAR_ARCHIVE).is_file():
        return (*_read_cifar_archive(input_dir / CIFAR_ARCHIVE, classes), "cifar-100-archive")
    for folder in (input_dir / CIFAR_FOLDER, input_dir):
        if (folder / "meta").is_file() and (folder / "train").is_file():
            return (*_read_cifar_folder(folder, classes), "cifar-100-folder")
    return (*read_image_folder(input_dir, classes), "image-folder")


# --- data snapshots -------------------------------------------------------------------

SNAPSHOT_MANIFEST = "manifest.json"
SNAPSHOT_FORMAT = "scones-data-snapshot/1"


def verify_snapshot(input_dir: Path) -> dict:
    """{"id", "parent"} of the snapshot in input_dir after checking every file against its
    manifest ("none" for a first snapshot's parent, "" for a plain folder's id)."""
    path = input_dir / SNAPSHOT_MANIFEST
    if not path.is_file():
        return {"id": "", "parent": "none"}
    try:
        manifest = json.loads(path.read_text())
        listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
        assert manifest["format"] == SNAPSHOT_FORMAT
    except (ValueError, KeyError, TypeError, AssertionError):
        raise PreprocessError(f"{path}: not a {SNAPSHOT_FORMAT} manifest") from None
    present = {p.relative_to(input_dir).as_posix() for p in input_dir.rglob("*")
               if p.is_file() and p != path}
    for name in sorted(set(listed) - present):
        raise PreprocessError(f"snapshot {manifest.get('id')}: {name} is listed in the "
                              "manifest but missing")
    for name in sorted(present - set(listed)):
        raise PreprocessError(f"snapshot {manifest.get('id')}: {name} is not in the manifest; "
                              "a snapshot's folder is never written to after it is made")
    for name, digest in sorted(listed.items()):
        if hashlib.sha256((input_dir / name).read_bytes()).hexdigest() != digest:
            raise PreprocessError(f"snapshot {manifest.get('id')}: {name} does not match its "
                                  "SHA-256 in the manifest (altered after the snapshot)")
    return {"id": str(manifest.get("id") or ""), "parent": str(manifest.get("parent") or "none")}


# --- splitting and writing -------------------------------------------------------------

def stratified_split(labels: np.ndarray, filenames: list[str], validation_fraction: float,
                     test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices per split. Per class: order by file name, shuffle with the seed, cut.

    Ordering by name first makes the split depend only on the data and the seed, not on
    the order files were listed in.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort([filenames[i] for i in members], kind="stable")]
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * test_fraction))
        n_validation = int(round(len(members) * validation_fraction))
        parts["test"].append(members[:n_test])
        parts["validation"].append(members[n_test:n_test + n_validation])
        parts["train"].append(members[n_test + n_validation:])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, filenames: np.ndarray,
                classes: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "data.tmp.npz"
    np.savez_compressed(tmp, images=images, labels=labels.astype(np.int64),
                        class_names=np.array(classes), filenames=filenames)
    tmp.replace(folder / "data.npz")  # whole file or nothing


def run(input_dir: Path, output_dir: Path, classes: list[str], validation_fraction: float,
        test_fraction: float, max_corrupt_fraction: float, seed: int) -> dict:
    if not input_dir.is_dir():
        raise PreprocessError(f"{input_dir}: input folder not found")
    snapshot = verify_snapshot(input_dir)
    images, labels, filenames, corrupt, source_type = read_input(input_dir, classes)
    candidates = len(images) + len(corrupt)
    if candidates == 0:
        raise PreprocessError(f"{input_dir}: no images found for classes {', '.join(classes)}")
    corrupt_fraction = len(corrupt) / candidates
    report = {
        "source_type": source_type,
        "input_dir": str(input_dir),
        "snapshot": snapshot,
        "class_names": classes,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "images_found": candidates,
        "images_used": len(images),
        "corrupt_count": len(corrupt),
        "corrupt_fraction": round(corrupt_fraction, 6),
        "max_corrupt_fraction": max_corrupt_fraction,
        "corrupt": corrupt,
        "counts": {},
    }
    report_dir = output_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    if corrupt_fraction > max_corrupt_fraction:
        report["status"] = "failed"
        (report_dir / "report.json").write_text(json.dumps(report, indent=2))
        raise PreprocessError(
            f"{len(corrupt)} of {candidates} images are unreadable ({corrupt_fraction:.1%}), "
            f"more than the allowed {max_corrupt_fraction:.1%}; see {report_dir / 'report.json'}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    for label, name in enumerate(classes):
        if not np.any(labels_arr == label):
            raise PreprocessError(f"{input_dir}: no readable images of class {name!r}")
    images_arr = np.stack(images).astype(np.uint8)
    names_arr = np.array(filenames)
    splits = stratified_split(labels_arr, filenames, validation_fraction, test_fraction, seed)
    for split, index in splits.items():
        if len(index) == 0:
            raise PreprocessError(f"the {split} split would be empty: "
                                  f"{len(images)} images are too few for these fractions")
        write_split(output_dir / split, images_arr[index], labels_arr[index], names_arr[index], classes)
        report["counts"][split] = {name: int(np.sum(labels_arr[index] == label))
                                   for label, name in enumerate(classes)}
    report["status"] = "ok"
    (report_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--input-dir", type=Path, default=Path("/opt/ml/processing/input/data"))
    parser.add_argument("--output-dir", type=Path, default=Path("/opt/ml/processing"))
    parser.add_argument("--classes", default="bicycle,motorcycle",
                        help="comma-separated class names, in label order")
    parser.add_argument("--validation-fraction", type=fraction, default=0.1)
    parser.add_argument("--test-fraction", type=fraction, default=0.1)
    parser.add_argument("--max-corrupt-fraction", type=fraction, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(args.classes) < 2 or len(set(args.classes)) != len(args.classes):
        parser.error(f"--classes needs at least two distinct names, got {args.classes}")
    if args.validation_fraction + args.test_fraction >= 1.0:
        parser.error("--validation-fraction + --test-fraction must be below 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args.input_dir, args.output_dir, args.classes, args.validation_fraction,
                     args.test_fraction, args.max_corrupt_fraction, args.seed)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {sum(c.values())} ({', '.join(f'{n} {k}' for k, n in c.items())})"
                       for split, c in report["counts"].items())
    print(f"preprocess: {report['images_used']} images from {report['source_type']} "
          f"({report['corrupt_count']} unreadable) -> {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
