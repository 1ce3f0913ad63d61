"""The workflow Lambdas on real images: S3 through moto, the endpoint through a Stubber on a
real sagemaker-runtime client, and over real HTTP on 127.0.0.1 (once a real trained model
behind it). Recorded events live in tests/events/*.json."""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws
from PIL import Image

from lambdas import classify_image, events, filter_inferences, serialize_image_data, settings
from lambdas.errors import (ConfigurationError, EndpointError, EndpointThrottled, ImageNotFound,
                            ImageNotReadable, ImageTooLarge, InvalidEvent, InvalidImage,
                            ThresholdConfidenceNotMet)
from photos import png_padded_to, real_image_path, upscaled_photo

BUCKET = "scones-test-images"
CLASSES = ("bicycle", "motorcycle")
EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"


def load_event(name: str):
    """A recorded event from tests/events/<name>.json."""
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())


@pytest.fixture
def aws_env(aws_credentials, monkeypatch):
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def png_bytes(sample_data_dir) -> bytes:
    return (sample_data_dir / "bicycle" / sorted(
        p.name for p in (sample_data_dir / "bicycle").glob("*.png"))[0]).read_bytes()


@pytest.fixture
def jpeg_bytes(png_bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png_bytes)).convert("RGB").save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def s3(aws_env, png_bytes):
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="incoming/bicycle.png", Body=png_bytes)
        yield client


def seed_event(key: str, bucket: str = BUCKET) -> dict:
    """The workflow's input event (tests/events/seed.json) for s3://bucket/key."""
    return {**load_event("seed"), "s3_bucket": bucket, "s3_key": key}


def runtime_response(body: bytes) -> dict:
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}


@pytest.fixture
def runtime():
    client = boto3.client("sagemaker-runtime", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


# ---- serialize_image_data ------------------------------------------------------------

def test_serialize_fills_base64_of_the_s3_object(s3, png_bytes):
    out = serialize_image_data.serialize_image(seed_event("incoming/bicycle.png"), s3)
    assert base64.b64decode(out["image_data"]) == png_bytes
    assert out["s3_key"] == "incoming/bicycle.png" and out["inferences"] == []


def test_serialize_handler_unwraps_body_events_and_answers_plain(s3, png_bytes):
    out = serialize_image_data.lambda_handler(load_event("seed_wrapped"), None)
    assert "body" not in out and base64.b64decode(out["image_data"]) == png_bytes
    as_string = load_event("seed_body_string")
    assert isinstance(as_string["body"], str)
    assert serialize_image_data.lambda_handler(as_string, None)["image_data"] == out["image_data"]


@pytest.mark.parametrize("key, bucket, message", [
    ("incoming/missing.png", BUCKET, "no such object"),
    ("x.png", "no-such-bucket-here", "no such bucket"),
])
def test_serialize_missing_object_or_bucket_is_image_not_found(s3, key, bucket, message):
    with pytest.raises(ImageNotFound, match=message) as info:
        serialize_image_data.serialize_image(seed_event(key, bucket), s3)
    assert f"s3://{bucket}/{key}" in str(info.value)


def test_serialize_refuses_a_truncated_png(s3, png_bytes):
    s3.put_object(Bucket=BUCKET, Key="incoming/cut.png", Body=png_bytes[:len(png_bytes) // 2])
    with pytest.raises(InvalidImage, match="truncated PNG.*no IEND") as info:
        serialize_image_data.serialize_image(seed_event("incoming/cut.png"), s3)
    assert f"s3://{BUCKET}/incoming/cut.png" in str(info.value)


@pytest.mark.parametrize("body, message", [
    (b"", "is empty"),
    (b"bicycle,motorcycle\n1,2\n", "not a PNG or JPEG"),
])
def test_serialize_refuses_non_images(s3, body, message):
    s3.put_object(Bucket=BUCKET, Key="incoming/bad.png", Body=body)
    with pytest.raises(InvalidImage, match=message) as info:
        serialize_image_data.serialize_image(seed_event("incoming/bad.png"), s3)
    assert f"s3://{BUCKET}/incoming/bad.png" in str(info.value)


def test_serialize_accepts_jpeg(s3, jpeg_bytes):
    s3.put_object(Bucket=BUCKET, Key="incoming/bicycle.jpg", Body=jpeg_bytes)
    out = serialize_image_data.serialize_image(seed_event("incoming/bicycle.jpg"), s3)
    assert base64.b64decode(out["image_data"]) == jpeg_bytes


def test_serialize_passes_by_value_up_to_the_state_limit_and_by_reference_past_it(s3, png_bytes):
    event = seed_event("incoming/edge.png")
    limit = events.max_image_bytes_for_state(event)
    fits = png_padded_to(png_bytes, limit)  # one whole valid PNG of exactly `limit` bytes
    s3.put_object(Bucket=BUCKET, Key="incoming/edge.png", Body=fits)
    out = serialize_image_data.serialize_image(event, s3)
    assert base64.b64decode(out["image_data"]) == fits and "image_ref" not in out
    assert events.payload_size(out) <= events.MAX_STATE_PAYLOAD_BYTES - events.PAYLOAD_HEADROOM_BYTES

    one_more = png_padded_to(png_bytes, limit + 1)
    put = s3.put_object(Bucket=BUCKET, Key="incoming/edge.png", Body=one_more)
    out = serialize_image_data.serialize_image(event, s3)
    assert out["image_data"] == ""
    assert out["image_ref"] == {"s3_bucket": BUCKET, "s3_key": "incoming/edge.png",
                                "etag": put["ETag"], "size_bytes": limit + 1,
                                "content_type": "image/png"}
    assert events.payload_size(out) < 1024  # the reference, not the bytes


def test_serialize_refuses_an_image_over_the_endpoints_6_mb(s3, png_bytes):
    too_big = png_padded_to(png_bytes, events.MAX_INVOKE_ENDPOINT_BODY_BYTES + 1)
    s3.put_object(Bucket=BUCKET, Key="incoming/huge.png", Body=too_big)
    with pytest.raises(ImageTooLarge) as info:
        serialize_image_data.serialize_image(seed_event("incoming/huge.png"), s3)
    message = str(info.value)
    assert str(len(too_big)) in message and "6291456-byte (6 MB) limit" in message
    assert "s3://scones-test-images/incoming/huge.png" in message
    # Exactly 6 MB is still taken, by reference.
    s3.put_object(Bucket=BUCKET, Key="incoming/huge.png",
                  Body=png_padded_to(png_bytes, events.MAX_INVOKE_ENDPOINT_BODY_BYTES))
    out = serialize_image_data.serialize_image(seed_event("incoming/huge.png"), s3)
    assert out["image_ref"]["size_bytes"] == events.MAX_INVOKE_ENDPOINT_BODY_BYTES


def test_serialize_refuses_a_large_non_image_without_reading_it_all(s3):
    s3.put_object(Bucket=BUCKET, Key="incoming/video.mp4", Body=b"\0\0\0\x18ftypmp42" + b"\0" * 400_000)
    with pytest.raises(InvalidImage, match="not a PNG or JPEG"):
        serialize_image_data.serialize_image(seed_event("incoming/video.mp4"), s3)


def test_serialize_refuses_bytes_after_a_pngs_end(s3, png_bytes):
    s3.put_object(Bucket=BUCKET, Key="incoming/tail.png", Body=png_bytes + b"GIF89a appended")
    with pytest.raises(InvalidImage, match="15 bytes after the end of its PNG image"):
        serialize_image_data.serialize_image(seed_event("incoming/tail.png"), s3)


@pytest.mark.parametrize("event, message", [tuple(case) for case in load_event("malformed")])
def test_malformed_events_are_invalid_event(s3, event, message):
    with pytest.raises(InvalidEvent, match=message):
        serialize_image_data.serialize_image(event, s3)


# ---- classify_image ------------------------------------------------------------------

def test_classify_sends_the_image_with_its_content_type(runtime, png_bytes, jpeg_bytes):
    client, stubber = runtime
    for image, content_type in ((png_bytes, "image/png"), (jpeg_bytes, "image/jpeg")):
        stubber.add_response("invoke_endpoint", runtime_response(b"[0.93, 0.07]"), {
            "EndpointName": "scones-ep", "ContentType": content_type,
            "Accept": "application/json; verbose=true", "Body": image})
        event = {**seed_event("a"), "image_data": base64.b64encode(image).decode()}
        out = classify_image.classify(event, client, "scones-ep", CLASSES)
        assert out["inferences"] == [0.93, 0.07]
        assert out["image_data"] == event["image_data"]
        assert out["ood_score"] is None and out["ood_threshold"] is None
    # the verbose answer: the picture's out-of-distribution score and its version's threshold
    stubber.add_response("invoke_endpoint", runtime_response(
        b'{"probabilities": [0.2, 0.8], "ood_score": 3.5, "ood_threshold": 9.25}'), {
        "EndpointName": "scones-ep", "ContentType": "image/png",
        "Accept": "application/json; verbose=true", "Body": png_bytes})
    out = classify_image.classify({**seed_event("a"), "image_data": base64.b64encode(
        png_bytes).decode()}, client, "scones-ep", CLASSES)
    assert (out["inferences"], out["ood_score"], out["ood_threshold"]) == ([0.2, 0.8], 3.5, 9.25)


@pytest.mark.parametrize("code, status, expected, fragment", [
    ("ModelError", 400, EndpointError, "HTTP 400"),
    ("ValidationError", 400, EndpointError, "ValidationError"),
    ("InternalFailure", 500, EndpointError, "HTTP 500"),
    ("ServiceUnavailable", 503, EndpointThrottled, "HTTP 503"),
    ("ThrottlingException", 400, EndpointThrottled, "ThrottlingException"),
    ("ModelNotReadyException", 429, EndpointThrottled, "ModelNotReadyException"),
])
def test_classify_maps_endpoint_errors(runtime, png_bytes, code, status, expected, fragment):
    client, stubber = runtime
    stubber.add_client_error("invoke_endpoint", service_error_code=code,
                             service_message="the model said no", http_status_code=status)
    event = {**seed_event("incoming/x.png"), "image_data": base64.b64encode(png_bytes).decode()}
    with pytest.raises(expected) as info:
        classify_image.classify(event, client, "scones-ep", CLASSES)
    assert type(info.value) is expected  # EndpointThrottled must not pass as EndpointError
    message = str(info.value)
    assert fragment in message and "scones-ep" in message and "incoming/x.png" in message


@pytest.mark.parametrize("body, fragment", [
    (b"<html>oops</html>", "not JSON"),
    (b'{"predictions": [0.9, 0.1]}', "expected a JSON list"),
    (b"[0.2, 0.3, 0.5]", "3 scores"),
])
def test_classify_refuses_unusable_endpoint_answers(runtime, png_bytes, body, fragment):
    client, stubber = runtime
    stubber.add_response("invoke_endpoint", runtime_response(body))
    event = {**seed_event("a.png"), "image_data": base64.b64encode(png_bytes).decode()}
    with pytest.raises(EndpointError, match=fragment):
        classify_image.classify(event, client, "scones-ep", CLASSES)


@pytest.mark.parametrize("image_data, error, fragment", [
    ("", InvalidEvent, "image_data is empty"),
    ("not base64 at all!", InvalidImage, "not valid base64"),
    (base64.b64encode(b"GIF89a....").decode(), InvalidImage, "not a PNG or JPEG"),
])
def test_classify_refuses_bad_image_data_before_calling_the_endpoint(runtime, image_data, error,
                                                                     fragment):
    client, _ = runtime  # no response queued: any call would fail the stubber
    with pytest.raises(error, match=fragment):
        classify_image.classify({**seed_event("k.png"), "image_data": image_data}, client, "ep")


def test_classify_refuses_bodies_over_the_invoke_endpoint_limit(runtime, png_bytes):
    client, _ = runtime
    big = png_bytes + b"\0" * events.MAX_INVOKE_ENDPOINT_BODY_BYTES
    with pytest.raises(ImageTooLarge, match=str(events.MAX_INVOKE_ENDPOINT_BODY_BYTES)):
        classify_image.classify({**seed_event("k.png"),
                                 "image_data": base64.b64encode(big).decode()}, client, "ep")


class _FakeRuntime(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.path, self.headers["Content-Type"], body))
        reply = json.dumps([0.25, 0.75]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_classify_handler_reads_its_settings_and_reaches_the_endpoint_over_http(
        aws_env, monkeypatch, png_bytes):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRuntime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
                           f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("ENDPOINT_NAME", "scones-delivery-vehicles")
        monkeypatch.setenv("CLASS_NAMES", "bicycle,motorcycle")
        event = {"body": {**seed_event("incoming/b.png"),
                          "image_data": base64.b64encode(png_bytes).decode()}}
        out = classify_image.lambda_handler(event, None)
    finally:
        server.shutdown()
        server.server_close()
    assert out["inferences"] == [0.25, 0.75] and "body" not in out
    path, content_type, body = _FakeRuntime.requests[-1]
    assert path == "/endpoints/scones-delivery-vehicles/invocations"
    assert content_type == "image/png" and body == png_bytes


def test_classify_handler_calls_the_endpoint_the_input_names_from_its_allow_list(
        aws_env, monkeypatch, png_bytes):
    """The staging test's executions name the staging endpoint; the function calls it only
    if ALLOWED_ENDPOINT_NAMES lists it, and prod (ENDPOINT_NAME) when none is named."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRuntime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seed = {**seed_event("incoming/b.png"), "image_data": base64.b64encode(png_bytes).decode()}
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
                           f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("ENDPOINT_NAME", "bikes-prod")
        monkeypatch.setenv("ALLOWED_ENDPOINT_NAMES", "bikes-staging,bikes-prod")
        monkeypatch.setenv("CLASS_NAMES", "bicycle,motorcycle")
        classify_image.lambda_handler({**seed, "endpoint_name": "bikes-staging"}, None)
        assert _FakeRuntime.requests[-1][0] == "/endpoints/bikes-staging/invocations"
        classify_image.lambda_handler({"body": {**seed, "endpoint_name": "bikes-staging"}},
                                      None)
        assert _FakeRuntime.requests[-1][0] == "/endpoints/bikes-staging/invocations"
        classify_image.lambda_handler(seed, None)
        assert _FakeRuntime.requests[-1][0] == "/endpoints/bikes-prod/invocations"
        calls = len(_FakeRuntime.requests)
        for other in ("someone-elses", 7):
            with pytest.raises(InvalidEvent, match="not an endpoint this function may call"):
                classify_image.lambda_handler({**seed, "endpoint_name": other}, None)
        monkeypatch.delenv("ALLOWED_ENDPOINT_NAMES")
        with pytest.raises(InvalidEvent, match="bikes-prod"):
            classify_image.lambda_handler({**seed, "endpoint_name": "bikes-staging"}, None)
        assert len(_FakeRuntime.requests) == calls   # nothing refused reached an endpoint
    finally:
        server.shutdown()
        server.server_close()


def test_classify_handler_names_a_missing_endpoint_setting(aws_env, monkeypatch, png_bytes):
    monkeypatch.delenv("ENDPOINT_NAME", raising=False)
    event = {**seed_event("k.png"), "image_data": base64.b64encode(png_bytes).decode()}
    with pytest.raises(ConfigurationError, match="ENDPOINT_NAME"):
        classify_image.lambda_handler(event, None)


# ---- images too large for the state: by reference -------------------------------------

@pytest.fixture
def photo_jpeg(sample_data_dir, tmp_path) -> bytes:
    """A 4000x3000 JPEG of a real bicycle image: over the state limit, under 6 MB."""
    path = upscaled_photo(real_image_path(sample_data_dir, "bicycle"), (4000, 3000), "JPEG",
                          tmp_path)
    data = path.read_bytes()
    assert events.max_image_bytes_for_state(seed_event(path.name)) < len(data) < \
        events.MAX_INVOKE_ENDPOINT_BODY_BYTES
    return data


def by_reference_event(key: str, etag: str | None) -> dict:
    """tests/events/classify_by_reference.json pointed at s3://BUCKET/key."""
    event = load_event("classify_by_reference")
    event["s3_key"] = key
    event["image_ref"].update(s3_key=key, etag=etag)
    return event


def test_classify_reads_a_referenced_image_from_s3_and_sends_its_bytes(s3, runtime, photo_jpeg):
    put = s3.put_object(Bucket=BUCKET, Key="incoming/photo.jpg", Body=photo_jpeg)
    event = serialize_image_data.serialize_image(seed_event("incoming/photo.jpg"), s3)
    assert event == by_reference_event("incoming/photo.jpg", put["ETag"]) | {
        "image_ref": {**by_reference_event("incoming/photo.jpg", put["ETag"])["image_ref"],
                      "size_bytes": len(photo_jpeg)}}
    client, stubber = runtime
    stubber.add_response("invoke_endpoint", runtime_response(b"[0.8, 0.2]"), {
        "EndpointName": "scones-ep", "ContentType": "image/jpeg",
        "Accept": "application/json; verbose=true", "Body": photo_jpeg})
    out = classify_image.classify(event, client, "scones-ep", CLASSES, s3_client=s3)
    assert out["inferences"] == [0.8, 0.2]
    assert out["image_data"] == "" and out["image_ref"] == event["image_ref"]
    assert events.payload_size(out) < 1024


def test_classify_refuses_a_referenced_image_that_changed_or_went(s3, runtime, photo_jpeg,
                                                                   png_bytes):
    client, _ = runtime  # no response queued: the endpoint must not be called
    put = s3.put_object(Bucket=BUCKET, Key="incoming/photo.jpg", Body=photo_jpeg)
    event = by_reference_event("incoming/photo.jpg", put["ETag"])
    s3.put_object(Bucket=BUCKET, Key="incoming/photo.jpg", Body=png_bytes)
    with pytest.raises(ImageNotReadable, match="changed after the workflow checked it"):
        classify_image.classify(event, client, "ep", CLASSES, s3_client=s3)
    s3.delete_object(Bucket=BUCKET, Key="incoming/photo.jpg")
    with pytest.raises(ImageNotFound, match="s3://scones-test-images/incoming/photo.jpg"):
        classify_image.classify(event, client, "ep", CLASSES, s3_client=s3)


def test_classify_refuses_a_referenced_image_over_6_mb(s3, runtime, png_bytes):
    client, _ = runtime
    s3.put_object(Bucket=BUCKET, Key="incoming/huge.png",
                  Body=png_padded_to(png_bytes, events.MAX_INVOKE_ENDPOINT_BODY_BYTES + 1))
    with pytest.raises(ImageTooLarge, match="6291456-byte"):
        classify_image.classify(by_reference_event("incoming/huge.png", None), client, "ep",
                                CLASSES, s3_client=s3)


def test_access_denied_says_the_image_may_be_missing_or_unreadable(aws_env, runtime):
    s3_client = boto3.client("s3", region_name="us-east-1")
    with Stubber(s3_client) as s3_stub:
        for _ in range(2):  # S3's answer for a missing key without s3:ListBucket
            s3_stub.add_client_error("get_object", service_error_code="AccessDenied",
                                     service_message="Access Denied", http_status_code=403)
        with pytest.raises(ImageNotReadable) as serialized:
            serialize_image_data.serialize_image(seed_event("incoming/gone.jpg"), s3_client)
        with pytest.raises(ImageNotReadable) as classified:
            classify_image.classify(by_reference_event("incoming/gone.jpg", '"abc"'),
                                    runtime[0], "ep", CLASSES, s3_client=s3_client)
    for info in (serialized, classified):
        message = str(info.value)
        assert "s3://scones-test-images/incoming/gone.jpg" in message
        assert "may not exist" in message and "s3:ListBucket" in message
        assert "s3:GetObject" in message


def model_runtime_handler(module, model):
    """An HTTP handler answering /endpoints/<name>/invocations with the real model."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reply = module.output_fn(module.predict_fn(
                module.input_fn(body, self.headers["Content-Type"]), model)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass
    return Handler


@pytest.mark.parametrize("class_name, size, fmt", [
    ("bicycle", (4000, 3000), "JPEG"),
    ("motorcycle", (1024, 768), "PNG"),
])
def test_photos_are_classified_end_to_end_by_reference(aws_env, monkeypatch, served_model,
                                                       sample_data_dir, tmp_path, class_name,
                                                       size, fmt):
    from moto.core.config import default_user_config

    module, model = served_model
    source = real_image_path(sample_data_dir, class_name)
    photo = upscaled_photo(source, size, fmt, tmp_path).read_bytes()
    key = f"incoming/{class_name}.{fmt.lower()}"
    assert len(photo) > events.max_image_bytes_for_state(seed_event(key))  # by reference
    content_type = f"image/{fmt.lower()}"
    direct = np.asarray(module.predict_fn(module.input_fn(photo, content_type), model))
    original = module.predict_fn(module.input_fn(source.read_bytes(), "image/png"), model)

    server = ThreadingHTTPServer(("127.0.0.1", 0), model_runtime_handler(module, model))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", url)
    monkeypatch.setenv("ENDPOINT_NAME", "scones-delivery-vehicles")
    monkeypatch.setenv("CLASS_NAMES", ",".join(CLASSES))
    monkeypatch.setenv("CONFIDENCE_THRESHOLD", "0.0")
    core = json.loads(json.dumps(default_user_config["core"]))
    core["passthrough"] = {"urls": [f"^{url}/"], "services": []}
    try:
        with mock_aws(config={"core": core}):
            s3_client = boto3.client("s3")
            s3_client.create_bucket(Bucket=BUCKET)
            s3_client.put_object(Bucket=BUCKET, Key=key, Body=photo)
            event = seed_event(key)
            for handler in (serialize_image_data.lambda_handler, classify_image.lambda_handler,
                            filter_inferences.lambda_handler):
                event = handler(event, None)
                assert events.payload_size(event) < 1024  # never the image in the state
                event = json.loads(json.dumps(event))    # as Step Functions carries it
    finally:
        server.shutdown()
        server.server_close()
    assert event["image_ref"]["content_type"] == content_type
    assert event["inferences"] == pytest.approx(direct.tolist(), abs=1e-5)
    assert event["predicted_label"] == CLASSES[int(np.argmax(direct))]
    # The photo gets (nearly) the probabilities its 32x32 original gets - compared before
    # calibration, whose temperature sharpens small differences - so the same class
    # wherever the original's is not a coin toss.
    raw = [module.probabilities_from_logits(module.tta_logits(model, module.input_fn(
        data, kind)[None]), 1.0)[0] for data, kind in ((photo, content_type),
                                                       (source.read_bytes(), "image/png"))]
    assert np.max(np.abs(raw[0] - raw[1])) < 0.05
    if np.max(original) > 0.55:
        assert int(np.argmax(direct)) == int(np.argmax(original))


# ---- filter_inferences ---------------------------------------------------------------

def test_filter_passes_confident_inferences_with_the_label():
    out = filter_inferences.filter_inference(load_event("filter_confident"), 0.8, CLASSES)
    assert out["meets_threshold"] is True and out["predicted_label"] == "motorcycle"
    at_edge = filter_inferences.filter_inference(
        {**seed_event("k.png"), "inferences": [0.8, 0.2]}, 0.8, CLASSES)
    assert at_edge["predicted_label"] == "bicycle"  # >= threshold meets it


def test_filter_below_threshold_raises_with_inferences_and_label():
    with pytest.raises(ThresholdConfidenceNotMet) as info:
        filter_inferences.filter_inference(
            {**seed_event("incoming/k.png"), "inferences": [0.62, 0.38]}, 0.8, CLASSES)
    message = str(info.value)
    assert "incoming/k.png" in message and "'bicycle'" in message
    # As Step Functions reports it: the Cause is Lambda's error JSON around the message.
    cause = json.dumps({"errorMessage": message, "errorType": "ThresholdConfidenceNotMet"})
    assert ThresholdConfidenceNotMet.details_from_message(cause) == {
        "inferences": [0.62, 0.38], "predicted_label": "bicycle", "threshold": 0.8}
    assert ThresholdConfidenceNotMet.details_from_message("no details here") is None


def test_filter_refuses_a_picture_over_its_versions_ood_threshold_as_not_a_vehicle():
    """However confident, a picture whose out-of-distribution score passes the threshold the
    endpoint answered with is NotAVehicle, distinct from ThresholdConfidenceNotMet; without
    a score (a model from before it) the filter is as before."""
    from lambdas.errors import NotAVehicle

    event = {**seed_event("incoming/noise.png"), "inferences": [0.99, 0.01]}
    with pytest.raises(NotAVehicle) as info:
        filter_inferences.filter_inference({**event, "ood_score": 31.5, "ood_threshold": 12.0},
                                           0.8, CLASSES)
    assert not isinstance(info.value, ThresholdConfidenceNotMet)
    assert "incoming/noise.png is not a bicycle or a motorcycle" in str(info.value)
    assert '"ood_score": 31.5' in str(info.value)
    for scored in ({"ood_score": 11.9, "ood_threshold": 12.0},
                   {"ood_score": None, "ood_threshold": None}, {}):
        assert filter_inferences.filter_inference({**event, **scored}, 0.8, CLASSES)[
            "predicted_label"] == "bicycle"


def test_filter_handler_reads_threshold_and_classes(monkeypatch):
    monkeypatch.setenv("CONFIDENCE_THRESHOLD", "0.95")
    monkeypatch.setenv("CLASS_NAMES", "bicycle, motorcycle")
    event = {"body": json.dumps({**seed_event("k.png"), "inferences": [0.03, 0.97]})}
    assert filter_inferences.lambda_handler(event, None)["predicted_label"] == "motorcycle"
    with pytest.raises(ThresholdConfidenceNotMet):
        filter_inferences.lambda_handler({**seed_event("k.png"), "inferences": [0.06, 0.94]}, None)


@pytest.mark.parametrize("inferences, fragment", [
    ([], "inferences are empty"),
    ([0.5, 0.3, 0.2], "3 inferences for 2 classes"),
    (None, "inferences are empty"),
])
def test_filter_refuses_missing_or_mismatched_inferences(inferences, fragment):
    with pytest.raises(InvalidEvent, match=fragment):
        filter_inferences.filter_inference({**seed_event("k.png"), "inferences": inferences},
                                           0.8, CLASSES)


@pytest.mark.parametrize("name, value, fragment", [
    ("CONFIDENCE_THRESHOLD", None, "CONFIDENCE_THRESHOLD is not set"),
    ("CONFIDENCE_THRESHOLD", "high", "CONFIDENCE_THRESHOLD must be a number"),
    ("CONFIDENCE_THRESHOLD", "1.5", "CONFIDENCE_THRESHOLD must be between 0 and 1"),
    ("CONFIDENCE_THRESHOLD", "nan", "CONFIDENCE_THRESHOLD must be between 0 and 1"),
    ("CLASS_NAMES", "bicycle", "CLASS_NAMES must list at least two"),
    ("CLASS_NAMES", "bicycle,,motorcycle", "CLASS_NAMES must list"),
    ("CLASS_NAMES", "bicycle,bicycle", "CLASS_NAMES must list"),
])
def test_settings_errors_name_the_variable(name, value, fragment):
    environ = {"CONFIDENCE_THRESHOLD": "0.8", "CLASS_NAMES": "bicycle,motorcycle",
               "ENDPOINT_NAME": "ep"}
    if value is None:
        del environ[name]
    else:
        environ[name] = value
    read = {"CONFIDENCE_THRESHOLD": settings.confidence_threshold,
            "CLASS_NAMES": settings.class_names}[name]
    with pytest.raises(ConfigurationError, match=fragment):
        read(environ)


# ---- the three together --------------------------------------------------------------

def test_the_three_functions_chain_on_a_real_image(s3, runtime, png_bytes):
    client, stubber = runtime
    stubber.add_response("invoke_endpoint", runtime_response(b"[0.91, 0.09]"))
    event = serialize_image_data.serialize_image(seed_event("incoming/bicycle.png"), s3)
    event = classify_image.classify(event, client, "scones-ep", CLASSES)
    event = filter_inferences.filter_inference(event, 0.8, CLASSES)
    assert event["predicted_label"] == "bicycle" and event["meets_threshold"] is True
    assert set(event) == {"s3_bucket", "s3_key", "image_data", "inferences", "meets_threshold",
                          "predicted_label", "ood_score", "ood_threshold"}
    assert events.payload_size(event) < events.MAX_STATE_PAYLOAD_BYTES


def test_the_staging_tests_input_reaches_classify_naming_the_staging_endpoint(s3):
    """workflow.run's input for the staging test names staging's endpoint; serialize hands
    the name on, and classify's allow-list resolves it (prod when it is left out)."""
    from workflow.run import execution_input

    environ = {"ENDPOINT_NAME": "bikes-prod", "ALLOWED_ENDPOINT_NAMES": "bikes-staging,bikes-prod"}
    for named, expected in (("bikes-staging", "bikes-staging"), (None, "bikes-prod")):
        event = json.loads(execution_input(BUCKET, "incoming/bicycle.png", named))
        serialized = serialize_image_data.serialize_image(event, s3)
        assert settings.endpoint_for(serialized.get("endpoint_name"), environ) == expected


def test_clients_need_the_functions_region(monkeypatch, png_bytes):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ENDPOINT_NAME", "ep")
    monkeypatch.setenv("CLASS_NAMES", "bicycle,motorcycle")
    event = {**seed_event("k.png"), "image_data": base64.b64encode(png_bytes).decode()}
    with pytest.raises(ConfigurationError, match="AWS_REGION is not set"):
        classify_image.lambda_handler(event, None)
    assert settings.aws_region({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "x"}) == \
        "eu-west-1"
    assert settings.aws_region({"AWS_DEFAULT_REGION": "us-west-2"}) == "us-west-2"


@pytest.mark.parametrize("error, reported", [
    ("States.Timeout", "WorkflowError"), ("States.TaskFailed", "WorkflowError"),
    ("EndpointError", "EndpointError")])
def test_a_failed_batch_never_reports_a_reserved_states_name(s3, error, reported):
    """The child's Fail state (BatchFailed) raises what record_failure returns: a name
    starting "States." is reserved there, so it is reported as WorkflowError, its original
    name leading the cause; each image's line keeps the original name."""
    from lambdas.classify_image_batch import record_failure

    batch = {"batch": 0, "bucket": BUCKET, "keys": ["incoming/bicycle.png"],
             "results": {"bucket": BUCKET, "key": "bulk-runs/r/results/batch-000000.jsonl"},
             "failure": {"Error": error, "Cause": "the batch ran out of time"}}
    answer = record_failure(batch, s3)
    assert answer["Error"] == reported
    assert answer["Cause"].startswith(f"{error}: " if reported != error else "the batch")
    line = json.loads(s3.get_object(Bucket=BUCKET, Key=batch["results"]["key"])["Body"].read())
    assert line["Error"] == error and line["BatchFailed"] is True


@pytest.mark.parametrize("code, message, served", [
    ("ValidationException", 'Could not find endpoint configuration "gone".', None),
    ("AccessDeniedException", "not authorized to perform: sagemaker:DescribeEndpointConfig",
     "raised")])
def test_which_version_serves_is_unknown_only_when_the_config_is_gone(aws_env, code, message,
                                                                      served):
    """A refusal to describe the serving config is raised, never read as "serves nothing
    known": that would turn off the "already serving" and "never roll back" checks."""
    from botocore.exceptions import ClientError

    from lambdas.deploy_approved_model import serving_package_arn

    client = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("describe_endpoint_config", code, message)
        if served == "raised":
            with pytest.raises(ClientError, match="not authorized"):
                serving_package_arn(client, {"EndpointConfigName": "scones-staging-v3"})
        else:
            assert serving_package_arn(client, {"EndpointConfigName": "gone"}) is served


def test_a_batch_image_over_its_versions_ood_threshold_is_not_a_vehicle():
    """Bulk: the batch's verbose answer carries each image's out-of-distribution score; an
    image over the threshold is NotAVehicle (a verdict, like the confidence threshold's)."""
    from lambdas import classify_image_batch

    def line(answer):
        return classify_image_batch._line("s3://b/k.png", "b", "k.png", answer, "ep", 0.8,
                                          CLASSES)

    refused = line({"probabilities": [0.99, 0.01], "ood_score": 20.0, "ood_threshold": 5.0})
    assert (refused["Status"], refused["Error"], refused["MeetsThreshold"]) == (
        "FAILED", "NotAVehicle", False)
    assert line({"probabilities": [0.99, 0.01], "ood_score": 1.0, "ood_threshold": 5.0})[
        "Status"] == "SUCCEEDED"
    assert line([0.99, 0.01])["Status"] == "SUCCEEDED"  # a model without a reference
