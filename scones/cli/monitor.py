"""`scones monitor report`: what the endpoint saw (data capture), summarised with plots."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from scones.cli.common import command_group, common_options


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


def _monitor_report(args, config) -> int:
    from workflow.monitoring import build_report, format_summary

    report = build_report(config, source=args.source, since=args.since,
                          out_dir=Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps({**report.summary, "report": str(report.markdown_path)}))
    else:
        print(format_summary(report.summary))
        print(f"report: {report.markdown_path}")
    if report.summary["malformed"]:
        print(f"warning: {report.summary['malformed']} malformed capture line(s) skipped; "
              f"listed in {report.markdown_path}", file=sys.stderr)
    return 0
