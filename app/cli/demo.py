"""`scones demo`: see app/demo.py."""
from __future__ import annotations

from app.cli.common import common_options


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", parents=[common_options()],
        help="the whole story locally: build, approve, deploy, classify, monitor",
        description="Run the pipeline on the sample data, approve the new version, deploy it "
                    "to the local endpoint, run the inference workflow over unseen images and "
                    "write the monitoring report.")
    demo.add_argument("--images", type=int, default=40, metavar="N",
                      help="how many unseen test-split images to classify (default 40)")
    demo.set_defaults(func=demo_command)


def demo_command(args, config) -> int:
    from app.demo import run_demo, studio_command

    result = run_demo(config, sample_size=args.images)
    print(f"\nDemo finished in {result.seconds:.0f} s: model version {result.model_version}, "
          f"{result.correct}/{result.images} images correct, {result.met_threshold} met the "
          f"confidence threshold, {result.below_threshold} below it, {result.failed} failed.")
    print(f"Monitoring loop: {result.clean_violations} violation(s) on the demo's traffic, "
          f"{result.drift_violations} on the darkened batch; "
          + (f"retraining execution {result.retraining_execution}."
             if result.retraining_execution else f"{result.retraining_reason}."))
    for title, path in result.plots.items():
        print(f"  {title}: {path}")
    print(f"Monitoring report: {result.report_path}")
    print(f"See it all in the browser (the local Studio): {studio_command(config)}")
    return 0 if result.failed == 0 else 1
