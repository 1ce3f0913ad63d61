"""`scones monitor report|run|label`: what the endpoint saw, whether it drifted from the
model's baseline, whether the model is still right, and retraining when it is not."""
from __future__ import annotations

import sys
from pathlib import Path

from app.cli.common import command_group, common_options
from scones.console import print_json


def register(subparsers) -> None:
    monitor = command_group(subparsers, "monitor", "monitoring of the endpoint's traffic")
    report = monitor.add_parser(
        "report", parents=[common_options()],
        help="summarise data-capture records into a report with plots",
        description="Read the endpoint's data-capture records (SageMaker's JSON Lines layout) "
                    "and write a markdown report with confidence plots.")
    report.add_argument("--since", metavar="WHEN",
                        help="only records from then on: ISO 8601 time or an age like 30m, "
                             "2h, 1d")
    report.add_argument("--source", metavar="DIR|s3://...",
                        help="folder or s3:// prefix holding the capture files "
                             "(default: the endpoint's capture destination)")
    report.add_argument("--out", metavar="DIR",
                        help="report folder (default: <workspace>/reports/monitor-<time>/)")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.set_defaults(func=_monitor_report)

    run = monitor.add_parser(
        "run", parents=[common_options()],
        help="check new capture against the model's baseline: violations, metrics, report",
        description="Read the capture recorded since the last run, check drift per feature "
                    "against each serving version's registered baseline and model quality "
                    "against its registered accuracy (where ground truth was labelled), write "
                    "constraint_violations.json (Model Monitor's format) and a report, and "
                    "emit metrics (CloudWatch on AWS, metrics.jsonl locally). Exit code 0 "
                    "whether or not there are violations; 1 never means drift.")
    run.add_argument("--since", metavar="WHEN",
                     help="check every record from then on (ISO 8601 or 30m, 2h, 1d) instead "
                          "of those since the last run")
    run.add_argument("--stage", metavar="STAGE",
                     help="only records served by this stage (capture's eventMetadata.stage)")
    run.add_argument("--source", metavar="DIR|s3://...",
                     help="folder or s3:// prefix holding the capture files "
                          "(default: the endpoint's capture destination)")
    run.add_argument("--out", metavar="DIR",
                     help="run folder (default: <workspace>/reports/monitor-<time>/)")
    run.add_argument("--retrain", action="store_true",
                     help="when the violations reach the alarm (monitoring.alarm_violations), "
                          "start a pipeline run, at most one per monitoring."
                          "retrain_cooldown_hours")
    run.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    run.set_defaults(func=_monitor_run)

    label = monitor.add_parser(
        "label", parents=[common_options()],
        help="ingest ground truth (SageMaker groundTruthData JSON Lines) for model quality",
        description="Read ground-truth records in SageMaker's layout ({\"groundTruthData\": "
                    "{\"data\": LABEL, \"encoding\": \"CSV\"}, \"eventMetadata\": {\"eventId\": "
                    "INFERENCE_ID}}) from a file, folder or s3:// prefix, merge them with the "
                    "checked predictions by inferenceId (or eventId) and print the accuracy "
                    "per model version. `monitor run` then checks quality against the "
                    "registered metrics.")
    label.add_argument("source", metavar="FILE|DIR|s3://prefix")
    label.add_argument("--json", action="store_true", help="print the result as JSON")
    label.set_defaults(func=_monitor_label)


def _monitor_report(args, config) -> int:
    from workflow.monitoring import build_report, format_summary, summary_json

    report = build_report(config, source=args.source, since=args.since,
                          out_dir=Path(args.out) if args.out else None)
    if args.json:
        print_json({**summary_json(report.summary), "Report": str(report.markdown_path)})
    else:
        print(format_summary(report.summary))
        print(f"report: {report.markdown_path}")
    if report.summary["malformed"]:
        print(f"warning: {report.summary['malformed']} malformed capture line(s) skipped; "
              f"listed in {report.markdown_path}", file=sys.stderr)
    return 0


def _monitor_run(args, config) -> int:
    from workflow.monitoring.check import format_run, run_monitor

    result = run_monitor(config, source=args.source, since=args.since, stage=args.stage,
                         out_dir=Path(args.out) if args.out else None)
    retraining = None
    if args.retrain:
        from app.retraining import start_retraining

        retraining = start_retraining(config, result)
    if args.json:
        print_json({**result.summary, "Retraining": retraining})
    else:
        print(format_run(result.summary))
        print(f"report: {result.summary['Report']}")
        if retraining:
            print(f"retraining: {retraining['Reason']}"
                  + (f" (execution {retraining['ExecutionId']}, {retraining['Status']})"
                     if retraining.get("ExecutionId") else ""))
    return 0


def _monitor_label(args, config) -> int:
    from workflow.monitoring.check import ingest_labels

    result = ingest_labels(config, args.source)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['Labels']} label(s) ingested; {result['Merged']} labelled prediction(s) "
          "merged by inferenceId/eventId")
    if result["Unmatched"]:
        print(f"{result['Unmatched']} label(s) match no checked prediction yet: they merge "
              "once `scones monitor run` has read the traffic they label")
    for quality in result["Quality"]:
        low, high = quality["AccuracyInterval"]
        print(f"version {quality['ModelVersion']}: accuracy {quality['Accuracy']:.4f} "
              f"[{low:.4f}, {high:.4f}] over {quality['Records']}")
    if result["Malformed"]:
        print(f"warning: {result['Malformed']} malformed ground-truth line(s) skipped, e.g. "
              f"{result['MalformedLines'][0]['File']} line {result['MalformedLines'][0]['Line']}"
              f": {result['MalformedLines'][0]['Reason']}", file=sys.stderr)
    return 0
