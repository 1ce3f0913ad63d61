"""The workflow Lambdas' failures, one class per kind.

When a Lambda raises, Lambda reports `errorType` = the exception's class name, and Step
Functions uses that string as the state's Error. So these class names are the API the
state machine's Retry/Catch rules match on (workflow/definition.py): rename one and the
ASL must change with it.
"""
from __future__ import annotations

import json
import re


class WorkflowLambdaError(Exception):
    """Base of every failure the workflow Lambdas raise on purpose."""


class ConfigurationError(WorkflowLambdaError):
    """An environment variable of the function is missing or malformed; names the variable."""


class InvalidEvent(WorkflowLambdaError):
    """The event lacks a key or a value has the wrong type."""


class ImageNotFound(WorkflowLambdaError):
    """No object (or no bucket) at s3://s3_bucket/s3_key."""


class ImageNotReadable(WorkflowLambdaError):
    """S3 refused the read for another reason (access denied, slow down...); carries S3's code."""


class InvalidImage(WorkflowLambdaError):
    """Empty object, bad base64, or bytes that are neither PNG nor JPEG."""


class ImageTooLarge(WorkflowLambdaError):
    """The image would not fit a Step Functions state or an InvokeEndpoint request."""


class EndpointError(WorkflowLambdaError):
    """The SageMaker endpoint answered with an error (4xx/5xx) or an unusable body."""


class EndpointThrottled(WorkflowLambdaError):
    """The endpoint is throttling or its model is not ready: worth retrying (the ASL does)."""


class ThresholdConfidenceNotMet(WorkflowLambdaError):
    """The best class probability is below the confidence threshold.

    The message is readable and ends with a JSON object holding the inferences, the
    predicted label and the threshold, so whoever reads the execution's Cause (people,
    the local runner) gets the numbers back: see `details_from_message`.
    """

    def __init__(self, *, s3_url: str, inferences: list[float], predicted_label: str,
                 threshold: float):
        self.inferences = list(inferences)
        self.predicted_label = predicted_label
        self.threshold = threshold
        details = {"inferences": self.inferences, "predicted_label": predicted_label,
                   "threshold": threshold}
        super().__init__(
            f"confidence {max(self.inferences):.4f} for predicted label {predicted_label!r} "
            f"is below the threshold {threshold} for {s3_url}: {json.dumps(details)}")

    def __reduce__(self):  # keyword-only __init__: teach pickle how to rebuild it
        return (_rebuild_threshold_error, (str(self), self.inferences, self.predicted_label,
                                           self.threshold))

    @staticmethod
    def details_from_message(message: str) -> dict | None:
        """{"inferences", "predicted_label", "threshold"} from this error's message, or from
        a Step Functions Cause (the Lambda error JSON whose errorMessage is that message).
        None when the text holds no such details."""
        try:
            cause = json.loads(message)
            if isinstance(cause, dict) and isinstance(cause.get("errorMessage"), str):
                message = cause["errorMessage"]
        except ValueError:
            pass
        match = re.search(r"(\{\"inferences\".*\})\s*$", message, flags=re.S)
        if not match:
            return None
        try:
            return json.loads(match.group(1))
        except ValueError:
            return None


class NotAVehicle(WorkflowLambdaError):
    """The picture's out-of-distribution score passes its model version's own OOD threshold:
    it is unlike every training picture (noise, a flat colour, a texture, a scrambled photo),
    so its class probabilities mean nothing, however confident. Distinct from
    ThresholdConfidenceNotMet (a real but unclear picture). The message ends with a JSON
    object holding the score, the threshold and the inferences."""


def _rebuild_threshold_error(message, inferences, predicted_label, threshold):
    error = ThresholdConfidenceNotMet.__new__(ThresholdConfidenceNotMet)
    Exception.__init__(error, message)
    error.inferences, error.predicted_label, error.threshold = inferences, predicted_label, threshold
    return error
