"""The serving code (inference.py) as SageMaker's container calls it, loaded from a real artifact."""
from __future__ import annotations

import importlib.util
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageFile

from photos import png_padded_to, png_with_header, real_image_path, upscaled_photo


@pytest.fixture(scope="module")
def real_png(sample_data_dir) -> bytes:
    return (sample_data_dir / "motorcycle" / sorted(p.name for p in (sample_data_dir / "motorcycle").iterdir())[0]).read_bytes()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def serve(module, model, body, content_type, accept="application/json"):
    return json.loads(module.output_fn(module.predict_fn(module.input_fn(body, content_type), model), accept))


def test_real_png_gives_class_probabilities(served_model, real_png):
    module, model = served_model
    assert Image.open(io.BytesIO(real_png)).mode == "RGBA"  # the shared data's mode
    probabilities = serve(module, model, real_png, "image/png")
    assert len(probabilities) == 2 == len(model.class_names)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_same_answer_for_every_image_content_type_and_batch_path(served_model, real_png):
    module, model = served_model
    rgb = Image.open(io.BytesIO(real_png)).convert("RGB")
    png = serve(module, model, real_png, "image/png")
    assert serve(module, model, real_png, "application/x-image") == png
    assert serve(module, model, real_png, "image/png; charset=binary") == png
    batch = module.predict_batch(model, np.stack([np.asarray(rgb)] * 3))
    assert batch.shape == (3, 2)
    assert np.allclose(batch, np.array(png)[None], atol=1e-5)
    # JPEG is lossy: close to, not equal to, the PNG answer.
    jpeg = serve(module, model, encode(rgb, "JPEG"), "image/jpeg")
    assert len(jpeg) == 2 and sum(jpeg) == pytest.approx(1.0, abs=1e-5)


def test_large_grey_jpeg_is_resized(served_model, real_png):
    module, model = served_model
    big_grey = Image.open(io.BytesIO(real_png)).convert("L").resize((300, 200))
    decoded = module.input_fn(encode(big_grey, "JPEG"), "image/jpeg")
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert len(serve(module, model, encode(big_grey, "JPEG"), "image/jpeg")) == 2


def test_predictions_follow_the_image(served_model, sample_data_dir):
    """Different real images get different probabilities: the model looks at the pixels."""
    module, model = served_model
    files = sorted((sample_data_dir / "bicycle").iterdir())[:5] + sorted((sample_data_dir / "motorcycle").iterdir())[:5]
    answers = {tuple(serve(module, model, f.read_bytes(), "image/png")) for f in files}
    assert len(answers) > 1


@pytest.mark.parametrize("body", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_undecodable_body_is_a_400(served_model, body):
    module, model = served_model
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(body, "image/png")
    assert caught.value.status_code == 400
    assert isinstance(caught.value, ValueError)
    assert "image" in str(caught.value)


@pytest.mark.parametrize("content_type", ["application/json", "text/csv", None])
def test_unsupported_content_type_is_a_415(served_model, real_png, content_type):
    module, _ = served_model
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(real_png, content_type)
    assert caught.value.status_code == 415
    assert "image/png" in str(caught.value)  # says what to send instead


def test_unsupported_accept_is_a_406(served_model, real_png):
    module, model = served_model
    prediction = module.predict_fn(module.input_fn(real_png, "image/png"), model)
    assert json.loads(module.output_fn(prediction, "*/*")) == json.loads(module.output_fn(prediction, None))
    with pytest.raises(module.InvalidInputError) as caught:
        module.output_fn(prediction, "text/csv")
    assert caught.value.status_code == 406


def test_model_fn_names_a_missing_file(served_model, tmp_path):
    module, _ = served_model
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        module.model_fn(str(tmp_path))


# ---- photos of real sizes, and hostile images ------------------------------------------

@pytest.mark.parametrize("class_name, size, fmt", [
    ("bicycle", (4000, 3000), "JPEG"),
    ("motorcycle", (1024, 768), "PNG"),
])
def test_photos_get_the_class_of_their_32x32_original(served_model, sample_data_dir, tmp_path,
                                                      class_name, size, fmt):
    module, model = served_model
    source = real_image_path(sample_data_dir, class_name)
    photo = upscaled_photo(source, size, fmt, tmp_path).read_bytes()
    decoded = module.input_fn(photo, f"image/{fmt.lower()}")
    original = module.input_fn(source.read_bytes(), "image/png")
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    # Area downscaling undoes the blow-up closely: the photo is its 32x32 original again.
    assert np.mean(np.abs(decoded.astype(int) - original.astype(int))) < 6
    # Compared before calibration: the temperature (< 1 for this small model) sharpens
    # both, so a small logit difference shows as a larger probability one after it.
    raw = [module.probabilities_from_logits(module.tta_logits(model, image[None]), 1.0)[0]
           for image in (decoded, original)]
    assert np.max(np.abs(raw[0] - raw[1])) < 0.05
    probabilities, expected = module.predict_fn(decoded, model), module.predict_fn(original, model)
    if np.max(expected) > 0.55:  # same class wherever the original's is not a coin toss
        assert np.argmax(probabilities) == np.argmax(expected)


def test_a_large_jpeg_is_decoded_reduced(served_model, real_png, monkeypatch):
    """A 48 MP JPEG (a phone's full-resolution photo) is over the 40 MP full-decode limit
    but accepted: it is decoded at 1/8 scale, never materialised at full size."""
    module, _ = served_model
    photo = encode(Image.open(io.BytesIO(real_png)).convert("L").resize((8000, 6000)), "JPEG")
    full_size_loads = []
    original_load = ImageFile.ImageFile.load

    def watched_load(image):
        if image.size == (8000, 6000):
            full_size_loads.append(image.size)
        return original_load(image)
    monkeypatch.setattr(ImageFile.ImageFile, "load", watched_load)
    assert module.input_fn(photo, "image/jpeg").shape == (32, 32, 3)
    assert not full_size_loads


def test_a_body_over_6_mb_is_a_413_naming_the_limit(served_model, real_png):
    module, _ = served_model
    body = png_padded_to(real_png, module.MAX_REQUEST_BODY_BYTES + 1)
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(body, "image/png")
    assert caught.value.status_code == 413
    assert "6291456-byte (6 MB) limit" in str(caught.value)
    at_limit = png_padded_to(real_png, module.MAX_REQUEST_BODY_BYTES)
    assert module.input_fn(at_limit, "image/png").shape == (32, 32, 3)


@pytest.mark.parametrize("width, height, fragment", [
    (50000, 50000, "over the pixel limit (40 MP"),    # Pillow's own bomb error, caught
    (7000, 7000, "7000x7000 (49.0 MP), over the 40 MP limit"),
])
def test_an_image_over_the_pixel_limit_is_a_413_from_its_header(served_model, width, height,
                                                                fragment):
    module, _ = served_model
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(png_with_header(width, height), "image/png")
    assert caught.value.status_code == 413
    assert fragment in str(caught.value)


def test_bytes_after_the_images_end_are_a_400(served_model, real_png):
    module, _ = served_model
    jpeg = encode(Image.open(io.BytesIO(real_png)).convert("RGB").resize((640, 480)), "JPEG")
    for body, fmt in ((real_png + b"#!/bin/sh\n", "PNG"), (jpeg + b"\0" * 5000, "JPEG"),
                      (jpeg + jpeg, "JPEG")):
        with pytest.raises(module.InvalidInputError) as caught:
            module.input_fn(body, f"image/{fmt.lower()}")
        assert caught.value.status_code == 400
        assert f"bytes follow the end of the {fmt} image" in str(caught.value)
    # An EXIF thumbnail (a JPEG with its own end marker inside the image) is not "after".
    with_thumbnail = encode(Image.open(io.BytesIO(jpeg)), "JPEG",
                            exif=_exif_with_thumbnail(jpeg))
    assert module.input_fn(with_thumbnail, "image/jpeg").shape == (32, 32, 3)


def test_a_camera_mpo_is_one_image_with_its_declared_pictures(served_model, real_png):
    """Phones write JPEGs with more pictures declared in an MP index (depth maps, HDR gain
    maps) after the first one's end marker: those are part of the image, not appended."""
    module, model = served_model
    photo = Image.open(io.BytesIO(real_png)).convert("RGB").resize((640, 480))
    mpo = encode(photo, "MPO", save_all=True, append_images=[photo.resize((320, 240))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    decoded = module.input_fn(mpo, "image/jpeg")
    assert np.array_equal(decoded, module.input_fn(encode(photo, "JPEG"), "image/jpeg"))
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(mpo + b"appended", "image/jpeg")
    assert caught.value.status_code == 400 and "8 bytes follow the end" in str(caught.value)


def _exif_with_thumbnail(jpeg: bytes) -> bytes:
    """A little-endian TIFF EXIF block whose IFD1 carries `jpeg`'s 64x48 thumbnail."""
    import struct
    thumbnail = encode(Image.open(io.BytesIO(jpeg)).resize((64, 48)), "JPEG")
    ifd0 = struct.pack("<H", 0) + struct.pack("<I", 26)  # no entries; IFD1 at 26
    ifd1_entries = [(0x0201, 4, 1, 26 + 2 + 2 * 12 + 4), (0x0202, 4, 1, len(thumbnail))]
    ifd1 = struct.pack("<H", len(ifd1_entries)) + b"".join(
        struct.pack("<HHII", *entry) for entry in ifd1_entries) + struct.pack("<I", 0)
    header = b"II*\x00" + struct.pack("<I", 8)
    body = header + b"\0" * (8 - len(header)) + ifd0
    body += b"\0" * (26 - len(body)) + ifd1 + thumbnail
    return b"Exif\x00\x00" + body


def test_other_image_formats_are_refused_before_any_parser_runs(served_model, real_png):
    module, _ = served_model
    for fmt in ("GIF", "BMP", "TIFF"):
        with pytest.raises(module.InvalidInputError) as caught:
            module.input_fn(encode(Image.open(io.BytesIO(real_png)).convert("RGB"), fmt),
                            "application/x-image")
        assert caught.value.status_code == 400 and "PNG/JPEG" in str(caught.value)


def test_predict_applies_the_artifact_temperature(served_model, small_model_tar, sample_data_dir, tmp_path):
    """predict_batch divides the logits by model_config.json's temperature before the softmax:
    the same weights with another temperature in the artifact give exactly those probabilities."""
    module, model = served_model
    config = model.config
    assert config["temperature"] > 0 and config["temperature"] != 1.0  # fitted, not a default
    images = np.stack([np.asarray(Image.open(f).convert("RGB"))
                       for f in sorted((sample_data_dir / "bicycle").iterdir())[:8]])
    logits = module.tta_logits(model, images)
    assert logits.shape == (8, 2, 2)  # the image and its mirror image

    def softmax_mean(temperature):
        scaled = logits.astype(np.float64) / temperature
        e = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).mean(axis=1)

    served_probabilities = module.predict_batch(model, images)
    assert np.allclose(served_probabilities, softmax_mean(config["temperature"]), atol=1e-6)
    assert not np.allclose(served_probabilities, softmax_mean(1.0), atol=1e-4)

    hotter = tmp_path / "artifact"
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(hotter, filter="data")
    (hotter / "model_config.json").write_text(json.dumps({**config, "temperature": 3.0}))
    hot_model = module.model_fn(str(hotter))
    hot = module.predict_batch(hot_model, images)
    assert np.allclose(hot, softmax_mean(3.0), atol=1e-6)
    assert not np.allclose(hot, served_probabilities, atol=1e-4)


def test_artifact_without_temperature_serves_the_plain_softmax(served_model, small_model_tar, tmp_path):
    module, model = served_model
    old = tmp_path / "artifact"
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(old, filter="data")
    config = {k: v for k, v in model.config.items() if k != "temperature"}
    (old / "model_config.json").write_text(json.dumps(config))
    assert module.model_fn(str(old)).temperature == 1.0
    (old / "model_config.json").write_text(json.dumps({**config, "temperature": 0}))
    with pytest.raises(ValueError, match="temperature must be positive"):
        module.model_fn(str(old))


# ---- the one decoder: orientation, depth, alpha ------------------------------------------

def test_the_model_archive_ships_the_one_decoder(small_model_tar, served_model, jobs_dir):
    with tarfile.open(small_model_tar) as tar:
        names = set(tar.getnames())
    assert {"code/inference.py", "code/image_decoding.py", "code/scones_net.py"} <= names
    module, _ = served_model
    # Serving decodes with that module, the one preprocess.py imports: no second copy.
    assert module.image_decoding.__file__.endswith("code/image_decoding.py")
    assert "def decode_image" not in (jobs_dir / "preprocess.py").read_text()
    assert "from image_decoding import" in (jobs_dir / "preprocess.py").read_text()


def _exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# The transpose that turns an upright picture into what a camera stores with each EXIF
# orientation (the inverse of what the decoder applies).
STORED_AS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
             3: Image.Transpose.ROTATE_180}


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_rotated_phone_photo_is_read_upright(served_model, sample_data_dir, orientation):
    module, model = served_model
    upright = Image.open(real_image_path(sample_data_dir, "motorcycle")).convert("RGB") \
        .resize((640, 480), Image.Resampling.BICUBIC)
    stored = encode(upright.transpose(STORED_AS[orientation]), "JPEG", quality=90,
                    exif=_exif_orientation(orientation))
    assert Image.open(io.BytesIO(stored)).getexif()[0x0112] == orientation
    as_sent = module.input_fn(stored, "image/jpeg")
    reference = module.input_fn(encode(upright, "JPEG", quality=90), "image/jpeg")
    assert np.mean(np.abs(as_sent.astype(int) - reference.astype(int))) < 3
    assert np.argmax(module.predict_fn(as_sent, model)) == \
        np.argmax(module.predict_fn(reference, model))


def _png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (greyscale for H x W, RGB for H x W x 3), written by hand: Pillow cannot
    write 48-bit RGB."""
    import struct
    import zlib
    height, width = values.shape[:2]
    colour_type = 0 if values.ndim == 2 else 2
    raw = b"".join(b"\0" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_greyscale_and_rgb_pngs_decode_to_their_8_bit_values(served_model):
    module, _ = served_model
    grey = np.zeros((32, 32), dtype=np.uint16)
    grey[:, :8], grey[:, 8:16], grey[:, 16:24], grey[:, 24:] = 0, 257 * 100, 32768, 65535
    assert Image.open(io.BytesIO(_png16(grey))).mode.startswith("I")
    decoded = module.input_fn(_png16(grey), "image/png")
    assert decoded[0, ::8].tolist() == [[0] * 3, [100] * 3, [128] * 3, [255] * 3]
    rgb = np.zeros((32, 32, 3), dtype=np.uint16)
    rgb[...] = (65535, 32768, 257 * 7)
    assert module.input_fn(_png16(rgb), "image/png")[5, 5].tolist() == [255, 128, 7]
    # Bigger than 32x32, through the resize path: the same scale.
    big_grey = np.full((300, 200), 257 * 60, dtype=np.uint16)
    assert np.all(module.input_fn(_png16(big_grey), "image/png") == 60)


def test_a_half_transparent_rgba_composites_the_same_at_every_size(served_model):
    module, _ = served_model
    rng = np.random.default_rng(7)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (32, 32, 3))
    rgba[..., 3] = 128
    rgba[:16, :, 3] = 0  # the top half fully transparent, whatever colour it holds
    small = Image.fromarray(rgba, "RGBA")
    at_32 = module.input_fn(encode(small, "PNG"), "image/png")
    at_256 = module.input_fn(encode(small.resize((256, 256), Image.Resampling.NEAREST), "PNG"),
                             "image/png")
    # Transparent shows the one background (white), at both sizes.
    assert at_32[:15].min() == 255 and at_256[:14].min() >= 250
    expected = (rgba[..., :3].astype(int) * 128 + 255 * 127) // 255
    assert np.abs(at_32[16:].astype(int) - expected[16:]).max() <= 1
    assert np.mean(np.abs(at_32.astype(int) - at_256.astype(int))) < 12


def test_a_refusal_never_shows_an_object_repr(served_model):
    module, _ = served_model
    for body in (b"this is not a png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff"):
        with pytest.raises(module.InvalidInputError) as caught:
            module.input_fn(body, "image/png")
        assert caught.value.status_code == 400
        assert " object at 0x" not in str(caught.value)
        assert "PNG/JPEG" in str(caught.value)


# ---- the serving contract: every request the Lambdas send --------------------------------

def test_the_registered_content_types_are_exactly_what_inference_py_answers(served_model):
    from lambdas.classify_image_batch import BATCH_CONTENT_TYPE
    from pipelines.pipeline import CONTENT_TYPES

    module, _ = served_model
    assert module.BATCH_CONTENT_TYPE == BATCH_CONTENT_TYPE
    assert list(module.SUPPORTED_CONTENT_TYPES) == CONTENT_TYPES


def test_a_batch_answers_each_image_in_order_and_refuses_only_the_bad_one(served_model,
                                                                         real_png):
    import base64

    module, model = served_model
    single = serve(module, model, real_png, "image/png")
    body = json.dumps({"images": [base64.b64encode(d).decode() for d in
                                  (real_png, b"not an image", real_png)]})
    answer = json.loads(module.output_fn(module.predict_fn(
        module.input_fn(body.encode(), module.BATCH_CONTENT_TYPE), model), "application/json"))
    predictions = answer["predictions"]
    assert len(predictions) == 3
    assert predictions[0] == pytest.approx(single, abs=1e-5) == predictions[2]
    assert predictions[1]["status"] == 400 and "PNG/JPEG" in predictions[1]["error"]
    for bad in (b'{"images": "x"}', b"[]", b'{"images": ["%%%"]}'):
        with pytest.raises(module.InvalidInputError) as caught:
            module.input_fn(bad, module.BATCH_CONTENT_TYPE)
        assert caught.value.status_code == 400


def test_image_statistics_describe_known_pictures(served_model):
    """The out-of-distribution description on pictures whose statistics are known by hand,
    one at a time and as one batch alike."""
    module, _ = served_model
    flat = np.full((32, 32, 3), 128, dtype=np.uint8)
    # 4 x 4 tiles of random grey levels: every step between pixels lies on the 4-pixel grid
    levels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    tiles = np.repeat(np.kron(levels, np.ones((4, 4), dtype=np.uint8))[..., None], 3, axis=2)
    ramp = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 32, axis=0)
    ramp = np.repeat(ramp, 3, axis=2)            # smooth: the same step everywhere
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[..., 0] = 255
    pictures = np.stack([flat, tiles, ramp, red])
    batch = module.image_statistics(pictures)
    one_by_one = np.concatenate([module.image_statistics(p) for p in pictures])
    assert np.allclose(batch, one_by_one, atol=1e-6)
    (luma_mean, luma_std, gradient, _half, saturation, _sat_std, spread, flat_blocks,
     blockiness) = batch.T
    assert luma_mean[0] == pytest.approx(128 / 255, abs=1e-6) and luma_std[0] == 0
    assert gradient[0] == pytest.approx(np.log(1e-3)) and flat_blocks[0] == 1
    assert saturation[0] == 0 and spread[0] == pytest.approx(0, abs=1e-5)
    # The tiles' steps all land on the grid (blockiness far above 0); the ramp's are
    # everywhere alike (blockiness near 0).
    assert blockiness[1] > 3 and abs(blockiness[2]) < 0.3
    assert saturation[3] == pytest.approx(1.0) and luma_mean[3] == pytest.approx(0.299, abs=1e-6)
