"""preprocess.py on real images and on generated CIFAR-100 archives, run as a subprocess."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_job
from photos import png_with_header

FINE_LABEL_NAMES = ["apple", "bicycle", "bus", "motorcycle", "tractor"]  # a stand-in for the 100


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` opcodes (BINSTRING), as the real CIFAR-100
    archive was pickled by Python 2: Python 3 reads them back with encoding="bytes" as
    bytes, so keys are b"data", b"fine_labels", ... and numpy's dtype state is bytes too."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # Python 2 era numpy named its reconstructor numpy.core.multiarray; so does the real archive.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_train_dict(per_class: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A CIFAR-100 `train` dict in the real layout: rows of 3072 channel-planar bytes."""
    rng = np.random.default_rng(seed)
    fine_labels = np.repeat(np.arange(len(FINE_LABEL_NAMES)), per_class)
    rng.shuffle(fine_labels)
    images_hwc = rng.integers(0, 256, size=(len(fine_labels), 32, 32, 3), dtype=np.uint8)
    data = images_hwc.transpose(0, 3, 1, 2).reshape(len(fine_labels), 3072)
    train = {
        "filenames": [f"img_{i:04d}.png" for i in range(len(fine_labels))],
        "batch_label": "training batch 1 of 1",
        "fine_labels": [int(x) for x in fine_labels],
        "coarse_labels": [0] * len(fine_labels),
        "data": np.ascontiguousarray(data),
    }
    return train, images_hwc


def write_cifar_folder(folder: Path, train: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": FINE_LABEL_NAMES,
                                               "coarse_label_names": ["vehicles"]}))
    (folder / "train").write_bytes(py2_pickle(train))
    return folder


def write_cifar_archive(archive: Path, folder: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return archive


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def preprocess(input_dir, output_dir, *extra, check=True):
    return run_job("preprocess.py", "--input-dir", input_dir, "--output-dir", output_dir, *extra, check=check)


# --- image folders -------------------------------------------------------------------------

def test_image_folder_of_real_images(small_image_folder, tmp_path):
    images = small_image_folder(per_class=30)
    result = preprocess(images, tmp_path / "out")
    assert "60 images from image-folder" in result.stdout
    total = 0
    for split, expected in (("train", 24), ("validation", 3), ("test", 3)):
        data = load_npz(tmp_path / "out" / split / "data.npz")
        assert data["images"].dtype == np.uint8 and data["images"].shape == (2 * expected, 32, 32, 3)
        assert data["labels"].dtype == np.int64
        assert list(data["class_names"]) == ["bicycle", "motorcycle"]
        assert np.bincount(data["labels"], minlength=2).tolist() == [expected, expected]  # stratified
        total += len(data["labels"])
        # Labels come from the folder, and the pixels are the file's RGB pixels.
        name = str(data["filenames"][0])
        assert data["labels"][0] == ["bicycle", "motorcycle"].index(name.split("/")[0])
        with Image.open(images / name) as original:
            assert np.array_equal(np.asarray(original.convert("RGB")), data["images"][0])
    assert total == 60
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["source_type"] == "image-folder" and report["corrupt_count"] == 0
    assert report["counts"]["train"] == {"bicycle": 24, "motorcycle": 24}


def test_split_is_deterministic_for_a_seed_and_changes_with_it(small_image_folder, tmp_path):
    images = small_image_folder(per_class=20)
    preprocess(images, tmp_path / "a", "--seed", "7")
    preprocess(images, tmp_path / "b", "--seed", "7")
    preprocess(images, tmp_path / "c", "--seed", "8")
    for split in ("train", "validation", "test"):
        a, b = (load_npz(tmp_path / run / split / "data.npz") for run in "ab")
        assert np.array_equal(a["images"], b["images"]) and list(a["filenames"]) == list(b["filenames"])
    test_a = set(load_npz(tmp_path / "a" / "test" / "data.npz")["filenames"])
    test_c = set(load_npz(tmp_path / "c" / "test" / "data.npz")["filenames"])
    assert test_a != test_c
    splits = [set(load_npz(tmp_path / "a" / s / "data.npz")["filenames"]) for s in ("train", "validation", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert len(set.union(*splits)) == 40


def test_any_mode_and_size_becomes_32x32_rgb(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("bicycle", "motorcycle"):
        (tmp_path / "in" / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            kind = i % 4
            if kind == 0:
                image.convert("L").save(tmp_path / "in" / name / f"{i}.png")
            elif kind == 1:
                image.convert("P").save(tmp_path / "in" / name / f"{i}.png")
            elif kind == 2:
                image.save(tmp_path / "in" / name / f"{i}.JPG", format="JPEG")
            else:
                image.convert("RGBA").save(tmp_path / "in" / name / f"{i}.png")
        (tmp_path / "in" / name / "notes.txt").write_text("not an image, not counted")
    preprocess(tmp_path / "in", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["images_used"] == 20 and report["corrupt_count"] == 0
    assert load_npz(tmp_path / "out" / "train" / "data.npz")["images"].shape[1:] == (32, 32, 3)


def test_a_few_corrupt_images_are_listed_and_tolerated(small_image_folder, tmp_path):
    images = small_image_folder(per_class=20)
    (images / "bicycle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = preprocess(images, tmp_path / "out", "--max-corrupt-fraction", "0.05")
    assert "(1 unreadable)" in result.stdout
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["corrupt_count"] == 1 and report["images_found"] == 41 and report["images_used"] == 40
    assert report["corrupt"][0]["file"] == "bicycle/broken.png" and report["corrupt"][0]["reason"]


def test_a_decompression_bomb_among_good_images_counts_as_one_corrupt_image(small_image_folder,
                                                                           tmp_path):
    images = small_image_folder(per_class=20)
    (images / "bicycle" / "bomb.png").write_bytes(png_with_header(50000, 50000))
    good = sorted((images / "motorcycle").iterdir())[0].read_bytes()
    (images / "motorcycle" / "with-payload.png").write_bytes(good + b"appended payload")
    result = preprocess(images, tmp_path / "out", "--max-corrupt-fraction", "0.1")
    assert "Traceback" not in result.stderr and "DecompressionBomb" not in result.stderr
    assert "40 images from image-folder (2 unreadable)" in result.stdout
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    reasons = {entry["file"]: entry["reason"] for entry in report["corrupt"]}
    assert set(reasons) == {"bicycle/bomb.png", "motorcycle/with-payload.png"}
    assert reasons["bicycle/bomb.png"].startswith("ImageDecodeError: image is over the pixel limit")
    assert "16 bytes follow the end of the PNG image" in reasons["motorcycle/with-payload.png"]


def test_too_many_corrupt_images_fail_the_step(small_image_folder, tmp_path):
    images = small_image_folder(per_class=20)
    for i in range(3):  # 3 of 43 = 7% > 5%
        (images / "motorcycle" / f"truncated_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 junk")
    result = preprocess(images, tmp_path / "out", check=False)
    assert result.returncode == 2
    assert "error: 3 of 43 images are unreadable (7.0%), more than the allowed 5.0%" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "train" / "data.npz").exists()
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["status"] == "failed" and len(report["corrupt"]) == 3


def test_missing_class_folder_is_named(small_image_folder, tmp_path):
    images = small_image_folder(per_class=5)
    result = preprocess(images, tmp_path / "out", "--classes", "bicycle,tricycle", check=False)
    assert result.returncode == 2 and "tricycle" in result.stderr and "bicycle, motorcycle" in result.stderr


# --- CIFAR-100 -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["archive", "extracted-inside", "extracted-itself"])
def test_cifar_archive_and_folder(tmp_path, layout):
    train, images_hwc = cifar_train_dict(per_class=20)
    folder = write_cifar_folder(tmp_path / "src" / "cifar-100-python", train)
    if layout == "archive":
        input_dir = tmp_path / "input"
        input_dir.mkdir()
        write_cifar_archive(input_dir / "cifar-100-python.tar.gz", folder)
        expected_source = "cifar-100-archive"
    else:
        input_dir = folder.parent if layout == "extracted-inside" else folder
        expected_source = "cifar-100-folder"
    result = preprocess(input_dir, tmp_path / "out")
    assert f"40 images from {expected_source}" in result.stdout
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["source_type"] == expected_source
    fine_labels = np.array(train["fine_labels"])
    seen = 0
    for split in ("train", "validation", "test"):
        data = load_npz(tmp_path / "out" / split / "data.npz")
        for image, label, name in zip(data["images"], data["labels"], data["filenames"]):
            class_name, file_name = str(name).split("/")
            row = train["filenames"].index(file_name)
            # Only bicycle (fine 1) and motorcycle (fine 3) rows, relabelled 0 and 1 in --classes order.
            assert FINE_LABEL_NAMES[fine_labels[row]] == class_name == ["bicycle", "motorcycle"][label]
            assert np.array_equal(image, images_hwc[row])  # channel-planar rows -> H x W x 3
            seen += 1
    assert seen == 40


def test_cifar_classes_chosen_by_name(tmp_path):
    train, _ = cifar_train_dict(per_class=20)
    folder = write_cifar_folder(tmp_path / "cifar-100-python", train)
    preprocess(folder, tmp_path / "out", "--classes", "tractor,bus,apple")
    data = load_npz(tmp_path / "out" / "train" / "data.npz")
    assert list(data["class_names"]) == ["tractor", "bus", "apple"]
    assert {str(n).split("/")[0] for n in data["filenames"]} == {"tractor", "bus", "apple"}
    result = preprocess(folder, tmp_path / "out2", "--classes", "bicycle,unicycle", check=False)
    assert result.returncode == 2 and "unicycle" in result.stderr and "not CIFAR-100 fine labels" in result.stderr


class RunsAShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, layout):
    marker = tmp_path / "pwned"
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": FINE_LABEL_NAMES}))
    (folder / "train").write_bytes(py2_pickle({"data": RunsAShellCommand(marker)}))
    if layout == "archive":
        input_dir = tmp_path / "input"
        input_dir.mkdir()
        write_cifar_archive(input_dir / "cifar-100-python.tar.gz", folder)
    else:
        input_dir = folder
    result = preprocess(input_dir, tmp_path / "out", check=False)
    assert result.returncode == 2
    assert "not a safe CIFAR-100 pickle: refused to load posix.system" in result.stderr
    assert "cifar-100-python/train" in result.stderr  # names the file
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "train").exists()


def test_pickle_naming_other_numpy_callables_is_refused(tmp_path):
    """Only array reconstruction is admitted, not everything under numpy."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": FINE_LABEL_NAMES}))
    evil = b"\x80\x02cnumpy\nload\nq\x00U\x05/etc/q\x01\x85q\x02Rq\x03."
    (folder / "train").write_bytes(evil)
    result = preprocess(folder, tmp_path / "out", check=False)
    assert result.returncode == 2 and "refused to load numpy.load" in result.stderr
