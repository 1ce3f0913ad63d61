"""AWS failures as errors a person can act on: what went wrong and what to set.

botocore raises a different exception for each way a call can fail before or at AWS (no
credentials, no region, an unreachable endpoint, a refused request). `translate` turns any
of them into an AwsError whose message names the setting to fix (AWS_PROFILE / `aws
configure`, aws.region, aws.role_arn, aws.bucket), so the CLI prints one line instead of a
botocore traceback. Anything it does not recognise it leaves alone (returns None).
"""
from __future__ import annotations

from scones.errors import SconesError

CREDENTIALS_HELP = ("set AWS_PROFILE to a profile made with `aws configure` (or `aws "
                    "configure sso` then `aws sso login`), or AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or run where an instance or Studio role provides them")
REGION_HELP = "set aws.region in configs/aws.yaml (or --set aws.region=eu-west-1)"

_BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "AuthFailure", "InvalidToken",
                    "IncompleteSignature", "MissingAuthenticationToken"}
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
           "AuthorizationError", "Forbidden", "403", "AllAccessDisabled"}
_THROTTLED = {"Throttling", "ThrottlingException", "TooManyRequestsException",
              "RequestLimitExceeded", "SlowDown"}


class AwsError(SconesError):
    """A call to AWS failed for a reason the user can fix (credentials, region, a setting)."""


def translate(exc: BaseException, region: str | None = None, role_arn: str | None = None,
              bucket: str | None = None) -> AwsError | None:
    """The AwsError for a botocore exception (None if `exc` is not one we can explain).
    region/role_arn/bucket: the configured values, named in the messages."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - botocore is a dependency
        return None
    where = f" in region {region}" if region else ""
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError,
                        bx.CredentialRetrievalError, bx.UnknownCredentialError)):
        return AwsError(f"no usable AWS credentials ({exc}): {CREDENTIALS_HELP}")
    if isinstance(exc, bx.ProfileNotFound):
        return AwsError(f"{exc}: set AWS_PROFILE to one of the profiles in ~/.aws/config "
                        "(`aws configure list-profiles`), or unset it")
    if isinstance(exc, (bx.NoRegionError, bx.InvalidRegionError, bx.UnknownRegionError)):
        return AwsError(f"no usable AWS region ({exc}): {REGION_HELP}")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        url = getattr(exc, "kwargs", {}).get("endpoint_url", "")
        return AwsError(f"cannot reach AWS at {url or 'its endpoint'}{where}: check that "
                        f"aws.region ({region or 'unset'}) is a region the service runs in, and "
                        "the network (proxy, VPC endpoints)")
    if isinstance(exc, bx.ClientError):
        return _client_error(exc, where, region, role_arn, bucket)
    if isinstance(exc, bx.ParamValidationError):
        return AwsError(f"an AWS request was refused before sending: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return AwsError(f"AWS: {exc}")
    return None


def _client_error(exc, where: str, region: str | None, role_arn: str | None,
                  bucket: str | None) -> AwsError:
    error = exc.response.get("Error", {}) or {}
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "").strip()
    operation = getattr(exc, "operation_name", "") or "the request"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    said = f"{code}: {message}" if message else code
    if code in _EXPIRED:
        return AwsError(f"the AWS credentials have expired ({said}): refresh them (`aws sso "
                        "login`, or a new session token) and try again")
    if code in _BAD_CREDENTIALS:
        return AwsError(f"AWS did not accept the credentials ({said}): check AWS_PROFILE or "
                        f"AWS_ACCESS_KEY_ID, and that they belong to an account{where}; "
                        f"{CREDENTIALS_HELP}")
    role_problem = "role" in message.lower() and any(
        word in message.lower() for word in ("assume", "not authorized", "does not exist",
                                             "not valid", "cannot be assumed", "invalid"))
    if role_problem:
        return AwsError(f"{operation} refused the role {role_arn or ''} ({said}): set "
                        "aws.role_arn to an existing IAM role that SageMaker may assume "
                        "(trust policy for sagemaker.amazonaws.com)")
    if code in ("NoSuchBucket",) or (code == "404" and operation in ("HeadBucket",)):
        name = error.get("BucketName") or bucket or ""
        return AwsError(f"the bucket {name} does not exist{where}: create it, or set "
                        "aws.bucket to an existing bucket")
    if code in _DENIED or status == 403:
        return AwsError(f"AWS denied {operation}{where} ({said}): the identity in use "
                        "(`aws sts get-caller-identity`) needs that permission - use another "
                        "AWS_PROFILE, or ask for it to be granted")
    if code in _THROTTLED:
        return AwsError(f"AWS throttled {operation} ({said}): try again in a minute")
    return AwsError(f"AWS {operation} failed{where}: {said}")
