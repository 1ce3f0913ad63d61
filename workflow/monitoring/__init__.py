"""A monitoring report from the endpoint's data capture.

Reads SageMaker's data-capture JSON Lines (one record per invocation, files laid out as
<prefix>/<endpoint>/AllTraffic/YYYY/MM/DD/HH/*.jsonl) from a folder, the local object store
or S3, and writes a markdown report with the confidence over time (threshold line drawn, as
the seed notebook's Model Monitor plot) and a confidence histogram per predicted class.

A malformed line is counted and listed (file and line number), never fatal: one bad record
must not hide a day of traffic.

A bulk run's batch request (lambdas.classify_image_batch: many images in one invocation) is
one capture record on SageMaker, as on the local endpoint: it is read here as one record per
image the model answered, so batch traffic is monitored like single images.
"""
from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

from lambdas.classify_image_batch import BATCH_CONTENT_TYPE
from scones.backend import backend_for
from scones.config import Config
from scones.console import format_table
from scones.deploy_settings import PROBE_INFERENCE_ID_PREFIX
from scones.errors import SconesError
from scones.workspace import Workspace
from workflow.monitoring.plots import plot_run
from workflow.stages import endpoint_status

QUANTILES = (5, 25, 50, 75, 95)
PROBABILITY_SUM_TOLERANCE = 1e-3  # float32 softmax sums stray by ~1e-7; a bug strays by more
CLOCK_SKEW = timedelta(minutes=5)  # hosts' clocks may disagree this much, no more
MALFORMED_LISTED = 50  # malformed lines named in the report; the count is always complete
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# .../YYYY/MM/DD/HH/<file>: the hour folder lets --since skip whole files unread.
_HOUR_PATH = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+$")


class MonitoringError(SconesError):
    """No capture records, an unreadable source, or a bad --since."""


@dataclass(frozen=True)
class CaptureRecord:
    inference_time: datetime
    probabilities: tuple[float, ...]
    source: str
    line: int
    event_id: str | None = None
    inference_id: str | None = None
    model_version: int | None = None
    stage: str | None = None
    input_base64: str | None = field(default=None, repr=False)  # the request, if captured

    @property
    def confidence(self) -> float:
        return max(self.probabilities)

    @property
    def predicted_index(self) -> int:
        return self.probabilities.index(self.confidence)


@dataclass
class Malformed:
    source: str
    line: int
    reason: str


@dataclass
class Report:
    summary: dict
    out_dir: Path
    markdown_path: Path
    plots: dict[str, Path] = field(default_factory=dict)


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'2h', '30m', '1d', '45s', '1w' (ago) or an ISO 8601 time; naive times are UTC."""
    if text is None or text == "":
        return None
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(text)
    if match:
        try:
            return now - timedelta(seconds=float(match.group(1))
                                   * _UNIT_SECONDS[match.group(2).lower()])
        except OverflowError:
            raise MonitoringError(f"--since {text!r} reaches before year 1: give an age such "
                                  "as 30m, 2h, 1d or an ISO 8601 time") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MonitoringError(f"--since {text!r}: expected an ISO 8601 time such as "
                              "2026-11-24T21:00:00Z or an age such as 30m, 2h, 1d") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def default_source(config: Config) -> str:
    """Where the endpoint captures to: the deployed endpoint's destination when known."""
    status = endpoint_status(config)
    destination = ((status.get("DataCaptureConfig") or {}).get("DestinationS3Uri")
                   or config.data_capture_uri)
    return f"{destination.rstrip('/')}/{config.workflow.endpoint_name}/"


def iter_capture_files(config: Config, source: str, since: datetime | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each *.jsonl under a folder or s3:// prefix, in name order.
    Files in hour folders that end before `since` are skipped without reading them."""
    if source.startswith("s3://"):
        store = backend_for(config).object_store()
        names = [u for u in store.list_urls(source) if u.endswith(".jsonl")]
        read = store.read_bytes
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise MonitoringError(f"capture source {root} does not exist")
        names = [str(p) for p in ([root] if root.is_file() else root.rglob("*.jsonl"))]
        read = lambda name: Path(name).read_bytes()  # noqa: E731
    for name in sorted(names):
        if since is not None and _hour_ends_before(name, since):
            continue
        yield name, read(name)


def _hour_ends_before(name: str, since: datetime) -> bool:
    match = _HOUR_PATH.search(name.replace("\\", "/"))
    if not match:
        return False
    try:
        hour = datetime(*map(int, match.groups()), tzinfo=timezone.utc)
    except ValueError:
        return False
    return hour + timedelta(hours=1) <= since


def parse_capture_lines(name: str, content: bytes, n_classes: int, first_line: int = 1,
                        now: datetime | None = None
                        ) -> tuple[list[CaptureRecord], list[Malformed]]:
    """The records of a capture file's lines, and the malformed ones. A record dated after
    `now` (beyond CLOCK_SKEW) is malformed: no endpoint answered it yet, and counted it
    would sit in every later window and skew the per-hour figures."""
    records, malformed = [], []
    latest = (now or datetime.now(timezone.utc)) + CLOCK_SKEW
    lines = content.decode("utf-8", errors="replace").splitlines()
    for number, raw in enumerate(lines, first_line):
        if not raw.strip():
            continue
        try:
            found = _parse_record(raw, n_classes, name, number)
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            malformed.append(Malformed(name, number, str(exc)))
            continue
        if found and found[0].inference_time > latest:
            malformed.append(Malformed(name, number, (
                f"eventMetadata.inferenceTime {found[0].inference_time.isoformat()} is in the "
                f"future (now {latest - CLOCK_SKEW:%Y-%m-%dT%H:%M:%SZ}): a wrong clock on the "
                "capturing host? not counted")))
            continue
        # a deployment's own probes (health check, bake) are not traffic
        records += [r for r in found
                    if not (r.inference_id or "").startswith(PROBE_INFERENCE_ID_PREFIX)]
    return records, malformed


def _parse_record(raw: str, n_classes: int, name: str, number: int) -> list[CaptureRecord]:
    """One capture line's records: one for an image request, one per answered image for a
    batch request."""
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({getattr(exc, 'msg', exc)})") from None
    except RecursionError:  # e.g. "[[[[..." 100000 deep: hostile, and only this line's fault
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise ValueError("not a capture record (a JSON object)")
    try:
        output = record["captureData"]["endpointOutput"]
        data, encoding = output["data"], output.get("encoding", "JSON")
        time_text = record["eventMetadata"]["inferenceTime"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"missing {exc} (captureData.endpointOutput.data and "
                         "eventMetadata.inferenceTime are required)") from None
    if encoding == "BASE64":  # output types not listed in CaptureContentTypeHeader
        try:
            data = base64.b64decode(data, validate=True).decode("utf-8")
        except (ValueError, TypeError):
            raise ValueError("endpointOutput.data is not valid base64") from None
    elif encoding not in ("JSON", "CSV"):
        raise ValueError(f"unknown endpointOutput.encoding {encoding!r}")
    try:
        answer = json.loads(data) if encoding != "CSV" else [float(v) for v in data.split(",")]
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise ValueError(f"endpointOutput.data is not a list of numbers: {str(data)[:60]!r}") from None
    try:
        when = datetime.fromisoformat(str(time_text))
    except ValueError:
        raise ValueError(f"eventMetadata.inferenceTime {time_text!r} is not ISO 8601") from None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    metadata = record.get("eventMetadata") or {}
    version = metadata.get("modelVersion")
    if not (version is None or (isinstance(version, int) and not isinstance(version, bool))):
        raise ValueError(f"eventMetadata.modelVersion {str(version)[:30]!r} is not a number")
    endpoint_input = record["captureData"].get("endpointInput") or {}
    input_data = endpoint_input.get("data") if isinstance(endpoint_input, dict) else None
    if input_data is not None and (not isinstance(input_data, str)
                                   or endpoint_input.get("encoding", "BASE64") != "BASE64"):
        raise ValueError("endpointInput.data should be the request's bytes in BASE64")
    text = lambda key: (str(metadata[key])[:200] if metadata.get(key) is not None  # noqa: E731
                        else None)
    event_id, inference_id, stage = text("eventId"), text("inferenceId"), text("stage")

    def one(probabilities, suffix: str = "", image: str | None = input_data) -> CaptureRecord:
        return CaptureRecord(when, _probabilities(probabilities, n_classes), name, number,
                             event_id=event_id and event_id + suffix,
                             inference_id=inference_id and inference_id + suffix,
                             model_version=version, stage=stage, input_base64=image)

    if not (isinstance(answer, dict) and "predictions" in answer):
        return [one(answer)]
    images = _batch_images(input_data, endpoint_input)
    predictions = answer["predictions"]
    if not isinstance(predictions, list) or (images is not None
                                             and len(images) != len(predictions)):
        raise ValueError(f"a batch answer's predictions ({str(predictions)[:40]!r}) do not "
                         "match its request's images one to one")
    # Image i of a batch is <eventId>#i (and <inferenceId>#i): ground truth names it so.
    return [one(prediction, f"#{i}", None if images is None else images[i])
            for i, prediction in enumerate(predictions)
            if not (isinstance(prediction, dict) and "error" in prediction)]  # refused


def _probabilities(answer, n_classes: int) -> tuple[float, ...]:
    probabilities = answer
    if isinstance(probabilities, dict):  # the verbose answer: {"probabilities", "ood_score"...}
        probabilities = probabilities.get("probabilities")
    if (not isinstance(probabilities, list) or len(probabilities) != n_classes
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                       and math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities)
            or abs(sum(probabilities) - 1.0) > PROBABILITY_SUM_TOLERANCE):
        raise ValueError(f"endpointOutput.data should be {n_classes} class probabilities "
                         f"(each in 0..1, summing to 1), got {str(answer)[:60]!r}")
    return tuple(float(p) for p in probabilities)


def _batch_images(input_data: str | None, endpoint_input: dict) -> list[str] | None:
    """The base64 images of a captured batch request (None when the input was not captured)."""
    if input_data is None:
        return None
    content_type = str(endpoint_input.get("observedContentType") or "")
    if content_type.split(";")[0].strip().lower() != BATCH_CONTENT_TYPE:
        raise ValueError(f"a batch answer ({{\"predictions\": ...}}) to a "
                         f"{content_type[:60]!r} request: expected {BATCH_CONTENT_TYPE}")
    try:
        images = json.loads(base64.b64decode(input_data, validate=True))["images"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValueError(f"endpointInput.data is not a {BATCH_CONTENT_TYPE} body "
                         '{"images": [<base64 image>, ...]}') from None
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ValueError('endpointInput.data: "images" should be a list of base64 images')
    return images


def summarise(records: list[CaptureRecord], malformed: list[Malformed], classes: Iterable[str],
              threshold: float, files: int, source: str, since: datetime | None) -> dict:
    import numpy as np

    classes = list(classes)
    confidences = np.array([r.confidence for r in records], dtype=float)
    counts = [0] * len(classes)
    for record in records:
        counts[record.predicted_index] += 1
    n = len(records)
    by_hour: dict[datetime, list[CaptureRecord]] = {}
    for record in records:
        hour = record.inference_time.astimezone(timezone.utc).replace(minute=0, second=0,
                                                                      microsecond=0)
        by_hour.setdefault(hour, []).append(record)
    under = int((confidences < threshold).sum())
    return {
        "source": source,
        "since": since.isoformat() if since else None,
        "files": files,
        "records": n,
        "malformed": len(malformed),
        "malformed_lines": [{"file": m.source, "line": m.line, "reason": m.reason}
                            for m in malformed[:MALFORMED_LISTED]],
        "first_inference": min(r.inference_time for r in records).isoformat(),
        "last_inference": max(r.inference_time for r in records).isoformat(),
        "threshold": threshold,
        "class_distribution": {c: {"count": counts[i], "share": round(counts[i] / n, 4)}
                               for i, c in enumerate(classes)},
        "confidence_quantiles": {f"p{q}": round(float(np.percentile(confidences, q)), 4)
                                 for q in QUANTILES},
        "mean_confidence": round(float(confidences.mean()), 4),
        "under_threshold": under,
        "under_threshold_share": round(under / n, 4),
        "per_hour": [
            {"hour": hour.strftime("%Y-%m-%dT%H:00Z"), "records": len(group),
             "mean_confidence": round(sum(r.confidence for r in group) / len(group), 4),
             "under_threshold": sum(r.confidence < threshold for r in group)}
            for hour, group in sorted(by_hour.items())],
    }


def build_report(config: Config, source: str | None = None, since: str | datetime | None = None,
                 out_dir: Path | str | None = None,
                 now: datetime | None = None) -> Report:
    """Read capture records, summarise them, draw the plots and write report.md.

    source: a folder or s3:// prefix (default: the endpoint's capture destination);
    since: ISO time or '2h'/'30m'/'1d'; out_dir: default <workspace>/reports/monitor-<time>/,
    never an existing report's folder.
    """
    now = now or datetime.now(timezone.utc)
    since_time = since if isinstance(since, datetime) else parse_since(since, now)
    source = source or default_source(config)
    records: list[CaptureRecord] = []
    malformed: list[Malformed] = []
    files = 0
    for name, content in iter_capture_files(config, source, since_time):
        files += 1
        found, bad = parse_capture_lines(name, content, len(config.classes), now=now)
        records += found
        malformed += bad
    if since_time is not None:
        records = [r for r in records if r.inference_time >= since_time]
    records.sort(key=lambda r: r.inference_time)
    if not records:
        window = f" since {since_time.isoformat()}" if since_time else ""
        detail = ""
        if malformed:
            first = malformed[0]
            detail = (f"; {len(malformed)} malformed line(s), e.g. {first.source} line "
                      f"{first.line}: {first.reason}")
        raise MonitoringError(
            f"no data-capture records{window} under {source} ({files} capture file(s)){detail}. "
            "Deploy a model with data capture and send it traffic (`scones workflow run`), "
            "or point --source at the capture folder")
    summary = summarise(records, malformed, config.classes, config.workflow.confidence_threshold,
                        files, source, since_time)
    out = report_dir(config, out_dir, now)
    plots = _plot(config, records, out)
    markdown = out / "report.md"
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown.write_text(_markdown(summary, plots, config.workflow.endpoint_name, now))
    return Report(summary=summary, out_dir=out, markdown_path=markdown, plots=plots)


def report_dir(config: Config, out_dir: Path | str | None, now: datetime) -> Path:
    if out_dir is not None:
        out = Path(out_dir)
        if (out / "report.md").exists():
            raise MonitoringError(f"{out} already holds a report (report.md): choose another "
                                  "--out so the earlier report is kept")
        out.mkdir(parents=True, exist_ok=True)
        return out
    base = Workspace(config.local.workspace).reports_dir / f"monitor-{now.strftime('%Y%m%dT%H%M%SZ')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir()  # exclusive: two reports in one second get their own folders
            return candidate
        except FileExistsError:
            continue
    raise MonitoringError(f"too many reports named {base.name}* in {base.parent}")


def _plot(config: Config, records: list[CaptureRecord], out: Path) -> dict[str, Path]:
    return plot_run(records, [], {}, [], config, out)


def format_summary(summary: dict) -> str:
    """The summary as a few human lines (CLI output)."""
    q = summary["confidence_quantiles"]
    lines = [
        f"{summary['records']} records in {summary['files']} file(s), "
        f"{summary['first_inference']} .. {summary['last_inference']}",
        "classes: " + ", ".join(f"{c} {v['count']} ({v['share']:.1%})"
                                for c, v in summary["class_distribution"].items()),
        "confidence: " + "  ".join(f"{k}={v:.3f}" for k, v in q.items()),
        f"under threshold {summary['threshold']:g}: {summary['under_threshold']} "
        f"({summary['under_threshold_share']:.1%})",
    ]
    if summary["malformed"]:
        lines.append(f"malformed lines: {summary['malformed']}")
    return "\n".join(lines)


def _markdown(summary: dict, plots: dict[str, Path], endpoint: str, now: datetime) -> str:
    q = summary["confidence_quantiles"]
    parts = [
        f"# Monitoring report: endpoint `{endpoint}`",
        "",
        f"Generated {now.isoformat(timespec='seconds')} from `{summary['source']}`"
        + (f", records since {summary['since']}" if summary["since"] else "") + ".",
        "",
        f"- records: **{summary['records']}** in {summary['files']} capture file(s), "
        f"{summary['first_inference']} to {summary['last_inference']}",
        f"- under the confidence threshold ({summary['threshold']:g}): "
        f"**{summary['under_threshold']}** ({summary['under_threshold_share']:.1%}); these "
        "fail the workflow with ThresholdConfidenceNotMet",
        f"- malformed capture lines skipped: {summary['malformed']}",
        "",
        "## Predicted classes",
        "",
        "```",
        format_table(["class", "records", "share"],
                     [(c, v["count"], f"{v['share']:.1%}")
                      for c, v in summary["class_distribution"].items()]),
        "```",
        "",
        "## Confidence",
        "",
        "```",
        format_table(list(q) + ["mean"], [[f"{v:.4f}" for v in q.values()]
                                          + [f"{summary['mean_confidence']:.4f}"]]),
        "```",
        "",
        f"![confidence over time]({plots['confidence_over_time'].name})",
        "",
        f"![confidence histogram per class]({plots['confidence_histogram'].name})",
        "",
        "## Per hour (UTC)",
        "",
        "```",
        format_table(["hour", "records", "mean confidence", "under threshold"],
                     [(h["hour"], h["records"], f"{h['mean_confidence']:.4f}",
                       h["under_threshold"]) for h in summary["per_hour"]]),
        "```",
        "",
    ]
    if summary["malformed"]:
        parts += ["## Malformed lines", ""]
        parts += [f"- `{m['file']}` line {m['line']}: {m['reason']}"
                  for m in summary["malformed_lines"]]
        if summary["malformed"] > len(summary["malformed_lines"]):
            parts.append(f"- ... and {summary['malformed'] - len(summary['malformed_lines'])} more")
        parts.append("")
    return "\n".join(parts)


_KEEP_CHILD_KEYS = {"class_distribution"}  # its keys are class names, not field names


def summary_json(summary: dict) -> dict:
    """The report summary with PascalCase keys (the --json house convention, SageMaker's)."""
    def pascal(key: str) -> str:
        return "".join(part[:1].upper() + part[1:] for part in key.split("_"))

    def convert(value, keep_keys: bool = False):
        if isinstance(value, dict):
            return {(k if keep_keys else pascal(k)): convert(v, k in _KEEP_CHILD_KEYS)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(summary)
