"""Lambda 3 of the inference workflow: keep only confident inferences.

Adds meets_threshold and predicted_label, or raises ThresholdConfidenceNotMet, which the
state machine catches into its "ThresholdNotMet" Fail state.
"""
from __future__ import annotations

from lambdas import events, settings
from lambdas.errors import InvalidEvent, ThresholdConfidenceNotMet


def filter_inference(event: dict, threshold: float, class_names: tuple[str, ...]) -> dict:
    """The event with meets_threshold and predicted_label (plain, unwrapped)."""
    event = events.parse_event(event, need_inferences=True)
    where = events.s3_url(event)
    inferences = event["inferences"]
    if len(inferences) != len(class_names):
        raise InvalidEvent(f"{where}: {len(inferences)} inferences for {len(class_names)} "
                           f"classes ({','.join(class_names)})")
    best = max(range(len(inferences)), key=inferences.__getitem__)
    label = class_names[best]
    if inferences[best] < threshold:
        raise ThresholdConfidenceNotMet(s3_url=where, inferences=inferences,
                                        predicted_label=label, threshold=threshold)
    return {**event, "meets_threshold": True, "predicted_label": label}


def lambda_handler(event, context):
    return filter_inference(event, settings.confidence_threshold(), settings.class_names())
