"""Lambda 3 of the inference workflow: keep only confident inferences of real vehicles.

Adds meets_threshold and predicted_label, or raises
  NotAVehicle                when the event's ood_score (the endpoint's out-of-distribution
                             score of the picture) passes ood_threshold (its model version's
                             own, chosen on validation; both come with the endpoint's answer,
                             see lambdas/classify_image.py), whatever the probabilities;
  ThresholdConfidenceNotMet  when the best class probability is below the threshold.
The state machine catches each into its own Fail state ("NotAVehicle", "ThresholdNotMet").
"""
from __future__ import annotations

import json

from lambdas import events, settings
from lambdas.errors import InvalidEvent, NotAVehicle, ThresholdConfidenceNotMet


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
    score, ood_threshold = event.get("ood_score"), event.get("ood_threshold")
    if events.is_number(score) and events.is_number(ood_threshold) and score > ood_threshold:
        details = {"inferences": inferences, "predicted_label": label,
                   "ood_score": score, "ood_threshold": ood_threshold}
        raise NotAVehicle(f"{where} is not a bicycle or a motorcycle: its out-of-distribution "
                          f"score {score:.2f} passes the model's threshold {ood_threshold:.2f} "
                          f"(unlike every training picture): {json.dumps(details)}")
    if inferences[best] < threshold:
        raise ThresholdConfidenceNotMet(s3_url=where, inferences=inferences,
                                        predicted_label=label, threshold=threshold)
    return {**event, "meets_threshold": True, "predicted_label": label}


def lambda_handler(event, context):
    return filter_inference(event, settings.confidence_threshold(), settings.class_names())
