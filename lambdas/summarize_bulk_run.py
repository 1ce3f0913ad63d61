"""Bulk inference, step 3: count what every batch wrote and decide the run's verdict.

Reads the manifest (lambdas.plan_image_batches) and each batch's JSON Lines results;
writes <results prefix>/summary.json and returns the counts. A batch that wrote nothing
(the Map stopped before running it) counts its images as NotRun, so every image of the
listing is accounted for exactly once.

The tolerated-failure threshold is decided here as well as by the Map state: on AWS the
Map fails with States.ExceedToleratedFailureThreshold (caught, passed here as
"map_error"); moto's interpreter parses ToleratedFailurePercentage but never enforces it,
so this step computes the failed-batch percentage from the results itself. Either way the
run ends in the same Fail state with the same counts.
"""
from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from lambdas.clients import aws_client
from lambdas.errors import InvalidEvent

SUMMARY_NAME = "summary.json"
READ_THREADS = 16


def _read_json_lines(s3_client, bucket: str, key: str) -> list[dict] | None:
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]


def summarize(event, s3_client) -> dict:
    if not isinstance(event, dict) or not isinstance(event.get("manifest"), dict):
        raise InvalidEvent("the summary step needs the planned run (with its 'manifest')")
    manifest = event["manifest"]
    batches = json.loads(s3_client.get_object(Bucket=manifest["bucket"],
                                              Key=manifest["key"])["Body"].read())

    def read(batch: dict):
        return batch, _read_json_lines(s3_client, batch["results"]["bucket"],
                                       batch["results"]["key"])

    statuses: Counter = Counter()
    errors: Counter = Counter()
    labels: dict[str, Counter] = {}
    failed_batches = not_run_batches = 0
    result_files = []
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for batch, lines in pool.map(read, batches):
            if lines is None:
                not_run_batches += 1
                statuses["NotRun"] += len(batch["keys"])
                continue
            result_files.append(batch["results"]["key"])
            failed_batches += any(line.get("BatchFailed") for line in lines)
            for line in lines:
                if line["Status"] == "SUCCEEDED":
                    statuses["Succeeded"] += 1
                elif line.get("MeetsThreshold") is False:
                    statuses["BelowThreshold"] += 1
                else:
                    statuses["Failed"] += 1
                    errors[line.get("Error") or "Unknown"] += 1
                if line.get("PredictedLabel") is not None:
                    per_label = labels.setdefault(line["PredictedLabel"], Counter())
                    per_label["Met" if line["Status"] == "SUCCEEDED" else "NotMet"] += 1
    tolerated = float(event.get("tolerated_failure_percentage", 0))
    failed_percentage = 100.0 * (failed_batches + not_run_batches) / max(1, len(batches))
    map_error = event.get("map_error")
    exceeded = failed_percentage > tolerated or isinstance(map_error, dict)
    summary = {
        "Images": sum(len(b["keys"]) for b in batches),
        "Succeeded": statuses["Succeeded"], "BelowThreshold": statuses["BelowThreshold"],
        "Failed": statuses["Failed"], "NotRun": statuses["NotRun"],
        "Batches": len(batches), "FailedBatches": failed_batches,
        "NotRunBatches": not_run_batches, "FailedBatchPercentage": round(failed_percentage, 3),
        "ToleratedFailurePercentage": tolerated, "ThresholdExceeded": exceeded,
        "Errors": dict(sorted(errors.items())),
        "PredictedLabels": {label: dict(c) for label, c in sorted(labels.items())},
    }
    if isinstance(map_error, dict):
        summary["MapError"] = {"Error": map_error.get("Error"), "Cause": map_error.get("Cause")}
    results = event["results"]
    key = f"{results['prefix'].rstrip('/')}/{SUMMARY_NAME}"
    s3_client.put_object(Bucket=results["bucket"], Key=key, ContentType="application/json",
                         Body=json.dumps({**summary, "ResultFiles": sorted(result_files)},
                                         indent=1).encode("utf-8"))
    output = {"summary": summary, "summary_object": {"bucket": results["bucket"], "key": key},
              "threshold_exceeded": exceeded}
    if exceeded:
        output["Cause"] = (f"{failed_batches + not_run_batches} of {len(batches)} batches "
                           f"failed or did not run ({failed_percentage:.1f}%, tolerated "
                           f"{tolerated:g}%); every image's result is under "
                           f"s3://{results['bucket']}/{results['prefix'].rstrip('/')}/results/")
    return output


def lambda_handler(event, context):
    return summarize(event, aws_client("s3"))
