"""Does a photo get the class its 32x32 version gets? Downscaling methods compared.

    .venv/bin/python benchmarks/bench_photos.py [--model-dir DIR] [--images 200]

Takes the held-out real 32x32 images (the validation and test splits preprocess.py makes
from ../shared/datasets/scones-cifar100/train), upscales each to photo sizes (640x480 PNG,
4032x3024 JPEG at quality 90, as a phone writes it), decodes the photo back to 32x32 with
each method, and compares the model's class for the photo with its class for the 32x32
original. Also the mean absolute pixel difference between the decoded photo and the
original (model-independent), and the decode time per photo.

Methods: "old" is the decoder before this change (full decode, bicubic resize); "served"
is pipelines/jobs/image_decoding.py's decode_image as it ships (JPEG draft, integer reduce,
RESIZE_FILTER); the others are the served path with another final filter, or a centre
crop instead of squashing the whole image.

Without --model-dir, trains a model first (preprocess.py + train.py, --epochs) in a
temporary folder. By hand only: not an assertion.

Measured on the 2-core development machine (model: train.py defaults, 50 epochs; 200
held-out images, 32x32 accuracy 0.915), agreement with the 32x32 class / pixel error:
  photos blown up with bicubic:  old 0.970 / 3.11, served (Lanczos) 0.970 / 2.47,
                                 box 0.945-0.955, bilinear 0.930, bicubic 0.970 / 3.17,
                                 centre crop 0.955-0.960 / 25.9
  photos blown up with Lanczos:  old 0.970 / 2.41, served (Lanczos) 0.995 / 1.89,
                                 box 0.960-0.970, bilinear 0.935, bicubic 0.970 / 2.47,
                                 centre crop 0.965 / 26.4
  decode time of a 4032x3024 JPEG: old 120-158 ms, served 18 ms (same numbers at 640x480).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = REPO_ROOT / "pipelines" / "jobs"
SAMPLE_DATA_DIR = REPO_ROOT.parent / "shared" / "datasets" / "scones-cifar100" / "train"
PHOTO_SIZES = {"640x480 PNG": ((640, 480), "PNG"), "4032x3024 JPEG": ((4032, 3024), "JPEG")}


def load_inference():
    spec = importlib.util.spec_from_file_location("inference_under_bench",
                                                  JOBS_DIR / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_decode_image(data: bytes, image_size: int = 32) -> np.ndarray:
    """The decoder before this change: full-size decode, then a bicubic resize."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGBA") if "transparency" in image.info else image
            image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8).copy()


def served_with(inference, resize_filter):
    def decode(data: bytes) -> np.ndarray:
        saved = inference.image_decoding.RESIZE_FILTER
        inference.image_decoding.RESIZE_FILTER = resize_filter
        try:
            return inference.decode_image(data)
        finally:
            inference.image_decoding.RESIZE_FILTER = saved
    return decode


def centre_crop(resize_filter):
    """The alternative to squashing: the centre square of the photo, then resized."""
    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            return np.asarray(image.resize((32, 32), resize_filter), dtype=np.uint8)
    return decode


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def train_model(root: Path, epochs: int) -> tuple[Path, Path]:
    processed, model_dir = root / "processed", root / "model"
    subprocess.run([sys.executable, str(JOBS_DIR / "preprocess.py"), "--input-dir",
                    str(SAMPLE_DATA_DIR), "--output-dir", str(processed)], check=True)
    subprocess.run([sys.executable, str(JOBS_DIR / "train.py"), "--train", str(processed / "train"),
                    "--validation", str(processed / "validation"), "--model-dir", str(model_dir),
                    "--output-data-dir", str(root / "output"), "--epochs", str(epochs)],
                   check=True, stdout=subprocess.DEVNULL)
    return model_dir, processed


def held_out_images(processed: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for split in ("validation", "test"):
        with np.load(processed / split / "data.npz", allow_pickle=False) as npz:
            images.append(npz["images"])
            labels.append(npz["labels"])
    return np.concatenate(images), np.concatenate(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path,
                        help="a trained model dir (model.pt, model_config.json); default: train one")
    parser.add_argument("--processed", type=Path,
                        help="preprocess.py's output for that model (its held-out splits)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--images", type=int, default=200, help="held-out images to use")
    parser.add_argument("--upscale", choices=("bicubic", "lanczos", "bilinear"), default="bicubic",
                        help="how the 32x32 images are blown up to photo size")
    args = parser.parse_args()

    inference = load_inference()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir is None:
            args.model_dir, args.processed = train_model(Path(tmp), args.epochs)
        elif args.processed is None:
            parser.error("--model-dir needs --processed (the splits it was trained on)")
        model = inference.model_fn(str(args.model_dir))
        images, labels = held_out_images(args.processed)
    images, labels = images[:args.images], labels[:args.images]
    originals = inference.predict_batch(model, images)
    original_class = originals.argmax(1)
    upscale = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "bilinear": Image.Resampling.BILINEAR}[args.upscale]
    served_filter = Image.Resampling(inference.image_decoding.RESIZE_FILTER).name
    methods = {"old (full decode, BICUBIC)": old_decode_image,
               f"served (draft/reduce, {served_filter})": inference.decode_image}
    for resize_filter in (Image.Resampling.BOX, Image.Resampling.BILINEAR,
                          Image.Resampling.BICUBIC, Image.Resampling.LANCZOS):
        if resize_filter != inference.image_decoding.RESIZE_FILTER:
            methods[f"draft/reduce, {resize_filter.name}"] = served_with(inference, resize_filter)
    methods[f"centre crop, {served_filter}"] = centre_crop(inference.image_decoding.RESIZE_FILTER)
    print(f"{len(images)} held-out images; 32x32 accuracy "
          f"{np.mean(original_class == labels):.3f}; photos upscaled with {args.upscale}")
    rows = []
    for size_name, (size, fmt) in PHOTO_SIZES.items():
        photos = [encode(Image.fromarray(image).resize(size, upscale), fmt) for image in images]
        for method_name, decode in methods.items():
            started = time.perf_counter()
            decoded = np.stack([decode(photo) for photo in photos])
            seconds = (time.perf_counter() - started) / len(photos)
            probabilities = inference.predict_batch(model, decoded)
            agreement = np.mean(probabilities.argmax(1) == original_class)
            accuracy = np.mean(probabilities.argmax(1) == labels)
            drift = np.mean(np.abs(probabilities - originals)[:, 0])
            pixel_error = np.mean(np.abs(decoded.astype(np.int16) - images.astype(np.int16)))
            rows.append((size_name, method_name, agreement, accuracy, drift, pixel_error,
                         seconds * 1000))
    header = ("photo", "method", "agree w/ 32x32", "accuracy", "mean |dp|", "pixel MAE",
              "ms/photo")
    print(" | ".join(header))
    for row in rows:
        print(f"{row[0]} | {row[1]} | {row[2]:.3f} | {row[3]:.3f} | {row[4]:.3f} | "
              f"{row[5]:.2f} | {row[6]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
