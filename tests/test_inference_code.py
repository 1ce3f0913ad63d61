"""The serving code (inference.py) as SageMaker's container calls it, loaded from a real artifact."""
from __future__ import annotations

import importlib.util
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def served(small_model_tar, tmp_path_factory):
    """(inference module from the artifact's code/, model_fn's model)."""
    extracted = tmp_path_factory.mktemp("served-artifact")
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(extracted, filter="data")
    spec = importlib.util.spec_from_file_location("artifact_inference_under_test",
                                                  extracted / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.model_fn(str(extracted))


@pytest.fixture(scope="module")
def real_png(sample_data_dir) -> bytes:
    return (sample_data_dir / "motorcycle" / sorted(p.name for p in (sample_data_dir / "motorcycle").iterdir())[0]).read_bytes()


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def serve(module, model, body, content_type, accept="application/json"):
    return json.loads(module.output_fn(module.predict_fn(module.input_fn(body, content_type), model), accept))


def test_real_png_gives_class_probabilities(served, real_png):
    module, model = served
    assert Image.open(io.BytesIO(real_png)).mode == "RGBA"  # the shared data's mode
    probabilities = serve(module, model, real_png, "image/png")
    assert len(probabilities) == 2 == len(model.class_names)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_same_answer_for_every_image_content_type_and_batch_path(served, real_png):
    module, model = served
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


def test_large_grey_jpeg_is_resized(served, real_png):
    module, model = served
    big_grey = Image.open(io.BytesIO(real_png)).convert("L").resize((300, 200))
    decoded = module.input_fn(encode(big_grey, "JPEG"), "image/jpeg")
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert len(serve(module, model, encode(big_grey, "JPEG"), "image/jpeg")) == 2


def test_predictions_follow_the_image(served, sample_data_dir):
    """Different real images get different probabilities: the model looks at the pixels."""
    module, model = served
    files = sorted((sample_data_dir / "bicycle").iterdir())[:5] + sorted((sample_data_dir / "motorcycle").iterdir())[:5]
    answers = {tuple(serve(module, model, f.read_bytes(), "image/png")) for f in files}
    assert len(answers) > 1


@pytest.mark.parametrize("body", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_undecodable_body_is_a_400(served, body):
    module, model = served
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(body, "image/png")
    assert caught.value.status_code == 400
    assert isinstance(caught.value, ValueError)
    assert "image" in str(caught.value)


@pytest.mark.parametrize("content_type", ["application/json", "text/csv", None])
def test_unsupported_content_type_is_a_415(served, real_png, content_type):
    module, _ = served
    with pytest.raises(module.InvalidInputError) as caught:
        module.input_fn(real_png, content_type)
    assert caught.value.status_code == 415
    assert "image/png" in str(caught.value)  # says what to send instead


def test_unsupported_accept_is_a_406(served, real_png):
    module, model = served
    prediction = module.predict_fn(module.input_fn(real_png, "image/png"), model)
    assert json.loads(module.output_fn(prediction, "*/*")) == json.loads(module.output_fn(prediction, None))
    with pytest.raises(module.InvalidInputError) as caught:
        module.output_fn(prediction, "text/csv")
    assert caught.value.status_code == 406


def test_model_fn_names_a_missing_file(served, tmp_path):
    module, _ = served
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        module.model_fn(str(tmp_path))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_serving_decodes_images_exactly_as_preprocess_did(served, jobs_dir, real_png):
    # preprocess.py ships as a single file, so the decoder is written twice; a served image
    # decoded differently from a training image would be silent train/serve skew.
    spec = importlib.util.spec_from_file_location("preprocess_under_test",
                                                  jobs_dir / "preprocess.py")
    preprocess = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preprocess)
    inference, _ = served
    rgba = Image.open(io.BytesIO(real_png))
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 0
    cases = {
        "RGBA PNG": real_png,
        "grey JPEG": _encoded(rgba.convert("L"), "JPEG"),
        "palette PNG with transparency": _encoded(palette, "PNG"),
        "64x64 RGB JPEG": _encoded(rgba.convert("RGB").resize((64, 64)), "JPEG"),
    }
    for name, data in cases.items():
        trained_as = preprocess.decode_image(data)
        served_as = inference.decode_image(data)
        assert trained_as.shape == (32, 32, 3), name
        assert np.array_equal(trained_as, served_as), name


def test_predict_applies_the_artifact_temperature(served, small_model_tar, sample_data_dir, tmp_path):
    """predict_batch divides the logits by model_config.json's temperature before the softmax:
    the same weights with another temperature in the artifact give exactly those probabilities."""
    module, model = served
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


def test_artifact_without_temperature_serves_the_plain_softmax(served, small_model_tar, tmp_path):
    module, model = served
    old = tmp_path / "artifact"
    with tarfile.open(small_model_tar) as tar:
        tar.extractall(old, filter="data")
    config = {k: v for k, v in model.config.items() if k != "temperature"}
    (old / "model_config.json").write_text(json.dumps(config))
    assert module.model_fn(str(old)).temperature == 1.0
    (old / "model_config.json").write_text(json.dumps({**config, "temperature": 0}))
    with pytest.raises(ValueError, match="temperature must be positive"):
        module.model_fn(str(old))
