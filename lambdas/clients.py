"""boto3 clients, created once per Lambda container (per service and endpoint URL), and the
S3 image read the serialize and classify functions share."""
from __future__ import annotations

import threading

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from lambdas import settings
from lambdas.errors import ImageNotFound, ImageNotReadable

# Step Functions retries throttling with backoff (see the ASL); botocore retrying as well
# would multiply the attempts, so keep its own retries short.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2},
                        connect_timeout=5, read_timeout=70)
_clients: dict[tuple, object] = {}
_lock = threading.Lock()


def aws_client(service: str):
    """A cached boto3 client for the function's region; a new one when the region or
    AWS_ENDPOINT_URL_<SERVICE> has changed."""
    env_name = service.upper().replace("-", "_")
    region = settings.aws_region()
    key = (service, region, settings.endpoint_url_override(env_name))
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = boto3.client(service, region_name=region,
                                                  config=_CLIENT_CONFIG)
        return client


# S3's answers for an object or bucket that is not there. A missing key is 404 NoSuchKey
# only when the caller may list the bucket (s3:ListBucket); without it S3 answers 403
# AccessDenied, so a 403 is reported as "missing or not readable", naming both causes.
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_ACCESS_DENIED_CODES = {"AccessDenied", "403", "Forbidden"}


def get_image_object(s3_client, bucket: str, key: str, *, if_match: str | None = None) -> dict:
    """GetObject for an image, S3's refusals as the workflow's named errors.

    if_match: the ETag the object must still have (PreconditionFailed -> ImageNotReadable
    saying it changed).
    """
    where = f"s3://{bucket}/{key}"
    extra = {"IfMatch": if_match} if if_match else {}
    try:
        return s3_client.get_object(Bucket=bucket, Key=key, **extra)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _NOT_FOUND_CODES:
            what = "bucket" if code == "NoSuchBucket" else "object"
            raise ImageNotFound(f"{where}: no such {what} ({code})") from None
        if code in _ACCESS_DENIED_CODES:
            raise ImageNotReadable(
                f"{where}: S3 refused the read ({code}): the object may not exist (S3 "
                f"answers 403, not 404, for a missing key when the function's role lacks "
                f"s3:ListBucket on the bucket) or the role lacks s3:GetObject on it") from None
        if code in ("PreconditionFailed", "412"):
            raise ImageNotReadable(
                f"{where}: the object changed after the workflow checked it (ETag "
                f"{if_match} no longer matches): run the workflow on it again") from None
        raise ImageNotReadable(f"{where}: S3 refused the read ({code or 'unknown error'}: "
                               f"{error.get('Message', exc)})") from None
