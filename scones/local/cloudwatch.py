"""CloudWatch's PutMetricData for the embedded default: each metric one JSON line in the
monitor's metrics.jsonl (<workspace>/monitoring/<endpoint>/), where `scones monitor` and
the local Studio read them. Shaped as boto3's cloudwatch client, so the monitor emits its
metrics the same way on both backends."""
from __future__ import annotations

import json

from scones.config import Config
from scones.workspace import Workspace


class LocalCloudWatch:
    def __init__(self, config: Config):
        self.metrics_file = (Workspace(config.local.workspace)
                             .monitoring_dir(config.workflow.endpoint_name) / "metrics.jsonl")

    def put_metric_data(self, *, Namespace: str, MetricData: list[dict]) -> dict:
        if MetricData:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            rows = [{"Namespace": Namespace, **d, "Timestamp": d["Timestamp"].isoformat()}
                    for d in MetricData]
            with self.metrics_file.open("a", encoding="utf-8") as out:
                out.write("".join(json.dumps(row, separators=(",", ":")) + "\n"
                                  for row in rows))
        return {}
