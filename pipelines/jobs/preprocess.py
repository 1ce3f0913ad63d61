"""Preprocess: raw images -> stratified train / validation / test splits as .npz files.

Runs as a SageMaker Processing job (defaults are the container's /opt/ml/processing paths),
under the local runner, or by hand. Needs stdlib, numpy, Pillow and its neighbour
image_decoding.py: the step ships this folder as its source_dir, as Train does.

Input (--input-dir) is one of:
  * an image-folder data set: one subfolder per class, PNG/JPEG files, any colour mode and
    size (decoded to 32x32 by image_decoding.py, the decoder inference.py serves with); a
    file the decoder refuses (not one whole PNG/JPEG, bytes after its end, over the pixel limits:
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
import sys
import tarfile
from pathlib import Path

import numpy as np

# The one decoder, shipped beside this file (the step's source_dir), also in the model's code/.
from image_decoding import ImageDecodeError, decode_image

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "validation", "test")
CIFAR_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR_FOLDER = "cifar-100-python"


class PreprocessError(Exception):
    """Bad input or a failed data-quality check; the message says what and where."""


# --- reading images --------------------------------------------------------------------

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
            except (ImageDecodeError, OSError) as exc:  # one corrupt image, never fatal
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
