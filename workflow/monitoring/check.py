"""The monitoring job: capture since the last run -> drift and quality checks against each
version's registered baseline -> constraint_violations.json, metrics, a report.

    run_monitor(config, ...)        one run (`scones monitor run`; on AWS the same code in a
                                    processing job on the EventBridge schedule)
    ingest_labels(config, source)   SageMaker groundTruthData records (`scones monitor label`)
    retraining_decision(...)        whether a run's violations start retraining now, or the
                                    cool-down holds it back; record_retraining(...) notes a start

State lives in the workspace under monitoring/<endpoint>/: position.json (how far each capture
file was read), predictions.jsonl (every checked prediction, for the ground-truth merge),
labels.jsonl, metrics.jsonl (the local stand-in for CloudWatch), retraining.json (cool-down).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import random
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from scones.backend import backend_for
from scones.config import Config
from scones.console import format_table
from scones.errors import SconesError
from scones.workspace import Workspace
from workflow.monitoring.plots import plot_quality, plot_run
from workflow.stages import endpoint_status
from workflow.monitoring import (CaptureRecord, Malformed, MonitoringError, report_dir,
                                 default_source, iter_capture_files, parse_capture_lines,
                                 parse_since)
from workflow.monitoring import profile

DRIFT_CHECK, QUALITY_CHECK = "baseline_drift_check", "model_quality_check"
VIOLATIONS_METRIC = "Violations"
PROFILE_CHUNK = 1000           # records decoded and profiled at a time: bounds a run's memory
DRIFT_POINTS_PLOTTED = 5000    # a fixed-seed sample of a large run's points, for the plots
WILSON_Z = 1.96  # 95% intervals


@dataclass
class VersionBaseline:
    version: int | None
    statistics: dict | None
    constraints: dict | None
    ood_reference: dict | None
    accuracy: float | None
    note: str = ""


@dataclass
class MonitorResult:
    out_dir: Path
    violations: list[dict]
    summary: dict
    metrics: list[dict]
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def alarm(self) -> bool:
        return bool(self.summary.get("Alarm"))


# --- workspace state -----------------------------------------------------------------------

_QUALITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    event_id TEXT, inference_id TEXT, time TEXT, version INTEGER, stage TEXT,
    confidence REAL, predicted TEXT);
CREATE INDEX IF NOT EXISTS predictions_inference_id ON predictions (inference_id);
CREATE INDEX IF NOT EXISTS predictions_event_id ON predictions (event_id);
CREATE TABLE IF NOT EXISTS labels (id TEXT PRIMARY KEY, label TEXT NOT NULL);
"""

class MonitorState:
    """The monitor's files in the workspace, one folder per endpoint."""

    def __init__(self, config: Config):
        self.workspace = Workspace(config.local.workspace)
        self.folder = self.workspace.monitoring_dir(config.workflow.endpoint_name)
        self.position_file = self.folder / "position.json"
        self.predictions_file = self.folder / "predictions.jsonl"
        self.labels_file = self.folder / "labels.jsonl"
        self.metrics_file = self.folder / "metrics.jsonl"
        self.retraining_file = self.folder / "retraining.json"
        self.quality_db = self.folder / "quality.sqlite"  # predictions and labels

    def _read(self, path: Path, default: Any) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            raise MonitoringError(f"{path} is unreadable ({exc}); delete it to start afresh "
                                  "(the next run then reads all capture again)") from None

    def position(self) -> dict:
        return self._read(self.position_file, {"Files": {}})

    def save_position(self, position: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        profile.write_json(self.position_file, position)

    def append(self, path: Path, rows: list[dict]) -> None:
        if not rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))

    # -- checked predictions and ground truth: SQLite, indexed by the merge keys ----------
    # Every run adds its predictions; a label finds its prediction by index. Nothing
    # re-reads the whole history (the old predictions.jsonl grew with every run and was
    # read whole by each one).

    def _db(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        fresh = not self.quality_db.exists()
        db = sqlite3.connect(self.quality_db, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_QUALITY_SCHEMA)
        if fresh:
            self._import_jsonl(db)
        return db

    def _import_jsonl(self, db: sqlite3.Connection) -> None:
        """A workspace from before the SQLite store: its JSON Lines, once."""
        for path, add in ((self.predictions_file, self._insert_predictions),
                          (self.labels_file, self._insert_labels)):
            if path.exists():
                add(db, self.read_lines(path))
                db.commit()
                path.replace(path.with_name(path.name + ".imported"))

    @staticmethod
    def _insert_predictions(db: sqlite3.Connection, rows: list[dict]) -> None:
        db.executemany(
            "INSERT INTO predictions (event_id, inference_id, time, version, stage, confidence,"
            " predicted) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.get("EventId"), r.get("InferenceId"), r.get("Time"), r.get("ModelVersion"),
              r.get("Stage"), r.get("Confidence"), r.get("Predicted")) for r in rows])

    @staticmethod
    def _insert_labels(db: sqlite3.Connection, rows: list[dict]) -> None:
        # the newest label of an id wins
        db.executemany("INSERT OR REPLACE INTO labels (id, label) VALUES (?, ?)",
                       [(r["Id"], r["Label"]) for r in rows])

    def add_predictions(self, rows: list[dict]) -> None:
        if rows:
            with closing(self._db()) as db, db:
                self._insert_predictions(db, rows)

    def add_labels(self, rows: list[dict]) -> None:
        if rows:
            with closing(self._db()) as db, db:
                self._insert_labels(db, rows)

    def labelled(self) -> list[dict]:
        """Checked predictions that have ground truth (by inferenceId, else eventId, as
        SageMaker's merge job does), in the order they were checked; looked up from the
        labels by index, so the cost follows the labels, not the whole history."""
        if not self.quality_db.exists() and not self.predictions_file.exists():
            return []
        with closing(self._db()) as db:
            rows = db.execute(
                "SELECT p.rowid AS n, p.*, l.label FROM labels l JOIN predictions p "
                "ON p.inference_id = l.id "
                "UNION ALL "
                "SELECT p.rowid AS n, p.*, l.label FROM labels l JOIN predictions p "
                "ON p.event_id = l.id WHERE p.inference_id IS NULL OR p.inference_id NOT IN "
                "(SELECT id FROM labels) ORDER BY n").fetchall()
        merged, seen = [], set()
        for row in rows:
            key = row["event_id"] or row["inference_id"]
            if key in seen:
                continue
            seen.add(key)
            merged.append({"EventId": row["event_id"], "InferenceId": row["inference_id"],
                           "Time": row["time"], "ModelVersion": row["version"],
                           "Stage": row["stage"], "Confidence": row["confidence"],
                           "Predicted": row["predicted"], "Label": row["label"]})
        return merged

    def read_lines(self, path: Path) -> list[dict]:
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a torn last line from a killed run; everything else is ours
            if isinstance(row, dict):
                rows.append(row)
        return rows


class _Reservoir:
    """A uniform sample of at most `size` items of a stream (fixed seed: a run's plots are
    reproducible)."""

    def __init__(self, size: int):
        self.size, self.seen, self.items = size, 0, []
        self._random = random.Random(0)

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item


# --- reading capture since the last run --------------------------------------------------------

def read_new_capture(config: Config, source: str, position: dict, since: datetime | None,
                     now: datetime | None = None,
                     each_batch: Callable[[list[CaptureRecord]], list[CaptureRecord]] | None
                     = None) -> tuple[list[CaptureRecord], list[Malformed], dict, int]:
    """Records appended since `position` (or, with since, every record from then on), the
    malformed lines among them, the new position and the number of files read.
    each_batch(records): called with each batch of new records as they are read; what it
    returns is kept instead (e.g. the records without their request bytes)."""
    offsets = dict(position.get("Files", {}))
    records: list[CaptureRecord] = []
    malformed: list[Malformed] = []
    files = 0
    for name, content in iter_capture_files(config, source, since):
        start = 0 if since is not None else int(offsets.get(name, 0))
        if start > len(content):
            start = 0  # the file was replaced by a shorter one: read it again
        end = content.rfind(b"\n") + 1  # a half-written last line waits for the next run
        if end <= start:
            offsets[name] = max(start, end)
            continue
        files += 1
        line = content.count(b"\n", 0, start) + 1
        at = start
        while at < end:  # PROFILE_CHUNK lines at a time: a big file is never parsed whole
            cut = at
            for _ in range(PROFILE_CHUNK):
                cut = content.find(b"\n", cut, end) + 1
                if cut == 0 or cut >= end:
                    cut = end
                    break
            piece = content[at:cut]
            found, bad = parse_capture_lines(name, piece, len(config.classes), line, now=now)
            records += each_batch(found) if each_batch is not None else found
            malformed += bad
            line += piece.count(b"\n")
            at = cut
        offsets[name] = end
    if since is not None:
        records = [r for r in records if r.inference_time >= since]
    records.sort(key=lambda r: r.inference_time)
    return records, malformed, {"Files": offsets}, files


# --- baselines -------------------------------------------------------------------------------

def baseline_urls(package: dict) -> tuple[str | None, str | None]:
    """statistics.json and constraints.json URLs of a model package (DriftCheckBaselines'
    ModelDataQuality, else ModelMetrics' ModelDataQuality)."""
    for key in ("DriftCheckBaselines", "ModelMetrics"):
        quality = (package.get(key) or {}).get("ModelDataQuality") or {}
        statistics = (quality.get("Statistics") or {}).get("S3Uri")
        constraints = (quality.get("Constraints") or {}).get("S3Uri")
        if statistics:
            return statistics, constraints
    return None, None


def _serving_version(config: Config) -> int | None:
    """The version records without a modelVersion are taken to come from: SageMaker's own
    capture (on AWS) does not say, so the endpoint's current version, else the newest
    Approved one."""
    try:
        version = endpoint_status(config).get("ModelPackageVersion")
        if version is None:
            latest = backend_for(config).registry().latest()
            version = latest and latest.get("ModelPackageVersion")
    except SconesError:
        return None
    return int(version) if version is not None else None


def load_baseline(config: Config, version: int | None) -> VersionBaseline:
    if version is None:
        return VersionBaseline(None, None, None, None, None,
                               "records do not say which model version answered")
    backend = backend_for(config)
    try:
        package = backend.registry().describe(version)
    except SconesError as exc:
        return VersionBaseline(version, None, None, None, None, f"not in the registry: {exc}")
    accuracy = package.get("Accuracy")
    statistics_url, constraints_url = baseline_urls(package)
    if not statistics_url:
        return VersionBaseline(version, None, None, None, accuracy,
                               "no baseline registered (DriftCheckBaselines.ModelDataQuality)")
    store = backend.object_store()
    ood_url = statistics_url.rsplit("/", 1)[0] + "/" + profile.OOD_FILE
    try:
        documents = [json.loads(store.read_bytes(url)) if url else None
                     for url in (statistics_url, constraints_url, ood_url)]
    except (SconesError, OSError, ValueError) as exc:
        return VersionBaseline(version, None, None, None, accuracy,
                               f"baseline {statistics_url} unreadable: {exc}")
    except Exception as exc:  # botocore ClientError on AWS: named in the report, not fatal
        return VersionBaseline(version, None, None, None, accuracy,
                               f"baseline {statistics_url} unreadable: {exc}")
    return VersionBaseline(version, *documents, accuracy)


# --- the checks --------------------------------------------------------------------------------

def feature_rows(records: list[CaptureRecord], classes: tuple[str, ...], reference: dict
                 ) -> tuple[list[tuple[CaptureRecord, dict]], list[Malformed]]:
    """Features of each record whose request was captured; an undecodable one is malformed."""
    import numpy as np

    decoded, bad = [], []
    for record in records:
        if record.input_base64 is None:
            continue
        try:
            image, width, height, mode = profile.decode_for_model(
                base64.b64decode(record.input_base64, validate=True))
        except (binascii.Error, ValueError) as exc:
            bad.append(Malformed(record.source, record.line, f"endpointInput.data: {exc}"))
            continue
        decoded.append((record, image, (width, height, mode)))
    if not decoded:
        return [], bad
    rows = profile.image_rows([d[1] for d in decoded], [d[2] for d in decoded],
                              np.array([d[0].probabilities for d in decoded]), classes, reference)
    return [(d[0], row) for d, row in zip(decoded, rows)], bad


def drift_checks(config: Config, baseline: VersionBaseline, rows: list[dict]) -> list[dict]:
    """One entry per feature: the distance, the threshold and whether it is a violation."""
    m = config.monitoring
    settings = ((baseline.constraints or {}).get("monitoring_config") or {}).get(
        "distribution_constraints") or {}
    floor = max(float(settings.get("comparison_threshold", m.drift_threshold)), m.drift_threshold)
    checks = []
    for name in profile.FEATURES:
        reference = profile.baseline_values(baseline.statistics, name)
        values = [row[name] for row in rows]
        if isinstance(reference, dict):
            distance, method = profile.linf_distance(reference, values), "L-infinity"
            n_baseline = baseline.statistics["dataset"]["item_count"]
            observed = {v: round(values.count(v) / len(values), 3) for v in sorted(set(values))}
            base = {k: round(v, 3) for k, v in sorted(reference.items())}
            statistic, baseline_text = f"shares {observed}", f"shares {base}"
        else:
            distance, method = profile.ks_distance(reference, values), "Kolmogorov-Smirnov"
            n_baseline = len(reference)
            statistic = f"median {_median(values):.4g}"
            baseline_text = (f"median {_median(reference):.4g} (p5-p95 "
                             f"{_quantile(reference, 5):.4g}-{_quantile(reference, 95):.4g})")
        threshold = max(floor, profile.significance_threshold(n_baseline, len(values),
                                                              m.drift_confidence))
        checks.append({
            "FeatureName": name, "Method": method, "Distance": round(distance, 4),
            "Threshold": round(threshold, 4), "Statistic": statistic,
            "Baseline": baseline_text, "Records": len(values), "BaselineRecords": n_baseline,
            "Violation": distance > threshold})
    return checks


def _quantile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def _median(values) -> float:
    return _quantile(values, 50)


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved at 0, 1 and small n)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def quality_of(pairs: list[tuple[str, str]], classes: tuple[str, ...]) -> dict:
    """Accuracy (Wilson 95% interval), per-class precision and recall, confusion matrix of
    (predicted, actual) label pairs."""
    n = len(pairs)
    correct = sum(p == a for p, a in pairs)
    low, high = wilson_interval(correct, n)
    matrix = {actual: {predicted: 0 for predicted in classes} for actual in classes}
    for predicted, actual in pairs:
        if actual in matrix and predicted in matrix[actual]:
            matrix[actual][predicted] += 1
    per_class = {}
    for name in classes:
        tp = matrix[name][name]
        predicted_as = sum(matrix[a][name] for a in classes)
        actually = sum(matrix[name].values())
        per_class[name] = {
            "Precision": round(tp / predicted_as, 4) if predicted_as else None,
            "Recall": round(tp / actually, 4) if actually else None}
    return {"Records": n, "Correct": correct, "Accuracy": correct / n if n else None,
            "AccuracyInterval": [round(low, 4), round(high, 4)], "PerClass": per_class,
            "ConfusionMatrix": matrix}


def quality_checks(config: Config, state: MonitorState, baselines: dict[int | None, VersionBaseline],
                   versions: set) -> tuple[list[dict], list[dict]]:
    """Model quality per version (all labelled predictions so far) against the registered
    accuracy minus monitoring.accuracy_tolerance; a violation when the Wilson interval's upper
    end is below that constraint (a drop, not noise). Also per-day quality for the plot."""
    merged = merged_predictions(state)
    results, over_time = [], []
    for version in sorted({row.get("ModelVersion") for row in merged} | set(versions),
                          key=lambda v: (v is None, v or 0)):
        pairs = [(row["Predicted"], row["Label"]) for row in merged
                 if row.get("ModelVersion") == version]
        if not pairs:
            continue
        quality = quality_of(pairs, config.classes)
        baseline = baselines.get(version) or load_baseline(config, version)
        baselines[version] = baseline
        threshold = (None if baseline.accuracy is None
                     else round(baseline.accuracy - config.monitoring.accuracy_tolerance, 4))
        violation = (threshold is not None and quality["Records"] >= config.monitoring.min_labels
                     and quality["AccuracyInterval"][1] < threshold)
        results.append({"ModelVersion": version, **quality, "RegisteredAccuracy":
                        baseline.accuracy, "Threshold": threshold, "Violation": violation})
        by_day: dict[str, list] = {}
        for row in merged:
            if row.get("ModelVersion") == version:
                by_day.setdefault(row["Time"][:10], []).append((row["Predicted"], row["Label"]))
        for day, day_pairs in sorted(by_day.items()):
            q = quality_of(day_pairs, config.classes)
            over_time.append({"ModelVersion": version, "Day": day, "Records": q["Records"],
                              "Accuracy": q["Accuracy"], "AccuracyInterval": q["AccuracyInterval"],
                              "Threshold": threshold})
    return results, over_time


def merged_predictions(state: MonitorState) -> list[dict]:
    """Checked predictions joined with ground truth by inferenceId, else eventId (as
    SageMaker's merge job does); the newest label of an id wins."""
    return state.labelled()


# --- ground truth -------------------------------------------------------------------------------

class LabelsNotJsonLinesError(MonitoringError):
    """`monitor label` given something that holds no groundTruthData JSON line."""


def ingest_labels(config: Config, source: str) -> dict:
    """Read SageMaker groundTruthData JSON Lines (a file, folder or s3:// prefix):

        {"groundTruthData": {"data": "motorcycle", "encoding": "CSV"},
         "eventMetadata": {"eventId": "<inferenceId or eventId>"}, "eventVersion": "0"}

    data is a class name or index (CSV) or JSON holding one. Malformed lines are counted and
    listed, never fatal. Returns {"Labels", "Malformed", "MalformedLines", "Quality"}."""
    state = MonitorState(config)
    rows, malformed = [], []
    files = 0
    for name, content in iter_capture_files(config, source):
        files += 1
        lines = content.decode("utf-8", errors="replace").splitlines()
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                rows.append(_label_row(raw, config.classes))
            except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
                malformed.append({"File": name, "Line": number, "Reason": str(exc)[:200]})
    if not files:
        raise MonitoringError(f"no *.jsonl ground-truth files under {source}")
    if not rows:
        # nothing to ingest: a CSV, an image, an empty file... is not "0 labels, all fine"
        first = (f"; e.g. {malformed[0]['File']} line {malformed[0]['Line']}: "
                 f"{malformed[0]['Reason']}" if malformed else " (no lines)")
        raise LabelsNotJsonLinesError(
            f"{source}: no ground-truth record in {files} file(s), {len(malformed)} "
            f"unreadable line(s){first}. Expected JSON Lines, one record per line: "
            '{"groundTruthData": {"data": "<class>", "encoding": "CSV"}, "eventMetadata": '
            '{"eventId": "<inferenceId>"}, "eventVersion": "0"}')
    state.add_labels(rows)
    merged = merged_predictions(state)
    by_version: dict = {}
    for row in merged:
        by_version.setdefault(row.get("ModelVersion"), []).append((row["Predicted"], row["Label"]))
    quality = [{"ModelVersion": v, **quality_of(pairs, config.classes)}
               for v, pairs in sorted(by_version.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    matched = {row.get("InferenceId") for row in merged} | {row.get("EventId") for row in merged}
    unmatched = len({row["Id"] for row in rows} - matched)
    return {"Labels": len(rows), "Merged": len(merged), "Unmatched": unmatched,
            "Malformed": len(malformed),
            "MalformedLines": malformed[:50], "Quality": quality}


def _label_row(raw: str, classes: tuple[str, ...]) -> dict:
    try:
        record = json.loads(raw)
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    data = record["groundTruthData"]["data"]
    encoding = record["groundTruthData"].get("encoding", "CSV")
    if encoding == "BASE64":
        data = base64.b64decode(data, validate=True).decode("utf-8")
    if encoding == "JSON" or (isinstance(data, str) and data.strip()[:1] in ("{", "[", '"')):
        data = json.loads(data) if isinstance(data, str) else data
        if isinstance(data, dict):
            data = data.get("label", data.get("Label"))
        elif isinstance(data, list) and len(data) == 1:
            data = data[0]
    label = str(data).strip()
    if label.isdigit() and int(label) < len(classes):
        label = classes[int(label)]
    if label not in classes:
        raise ValueError(f"groundTruthData.data {str(data)[:40]!r} is not one of {list(classes)}")
    event_id = record["eventMetadata"]["eventId"]
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("eventMetadata.eventId (the inferenceId or eventId) is missing")
    return {"Id": event_id, "Label": label}


# --- one run --------------------------------------------------------------------------------------

def run_monitor(config: Config, source: str | None = None, since: str | datetime | None = None,
                stage: str | None = None, out_dir: Path | str | None = None,
                now: datetime | None = None) -> MonitorResult:
    """Check the capture recorded since the last run (or since `since`) against each serving
    version's baseline; write constraint_violations.json, statistics.json, summary.json and
    report.md into the run's folder, emit metrics, and advance the position."""
    now = now or datetime.now(timezone.utc)
    since_time = since if isinstance(since, datetime) else parse_since(since, now)
    source = source or default_source(config)
    state = MonitorState(config)
    position = state.position()
    if position.get("Source", source) != source:
        position = {}  # offsets belong to another capture source
    baselines: dict[int | None, VersionBaseline] = {}
    counts: dict[int | None, int] = {}
    rows_by_version: dict[int | None, list[dict]] = {}
    sampled = _Reservoir(DRIFT_POINTS_PLOTTED)
    profiled_bad: list[Malformed] = []
    serving: list[int | None] = []  # the serving version, asked once when first needed

    def version_of(record: CaptureRecord) -> int | None:
        if record.model_version is not None:
            return record.model_version
        if not serving:
            serving.append(_serving_version(config))
        return serving[0]

    def check_batch(found: list[CaptureRecord]) -> list[CaptureRecord]:
        """A batch of new records: profiled and recorded now, then kept without their
        request bytes, so a run's memory follows the features, not the images."""
        if since_time is not None:
            found = [r for r in found if r.inference_time >= since_time]
        if stage is not None:
            found = [r for r in found if r.stage == stage]
        groups: dict[int | None, list[CaptureRecord]] = {}
        for record in found:
            groups.setdefault(version_of(record), []).append(record)
        predictions = []
        for version, group in groups.items():
            if version not in baselines:
                baselines[version] = load_baseline(config, version)
            baseline = baselines[version]
            counts[version] = counts.get(version, 0) + len(group)
            predictions += [{
                "EventId": r.event_id, "InferenceId": r.inference_id,
                "Time": r.inference_time.isoformat(), "ModelVersion": version,
                "Stage": r.stage, "Confidence": round(max(r.probabilities), 6),
                "Predicted": config.classes[r.probabilities.index(max(r.probabilities))]}
                for r in group]
            if baseline.statistics is None or baseline.ood_reference is None:
                continue
            for at in range(0, len(group), PROFILE_CHUNK):
                pairs, bad = feature_rows(group[at:at + PROFILE_CHUNK], config.classes,
                                          baseline.ood_reference)
                profiled_bad.extend(bad)
                rows_by_version.setdefault(version, []).extend(row for _, row in pairs)
                for record, row in pairs:
                    sampled.add({"Time": record.inference_time, "ModelVersion": version, **row})
        state.add_predictions(predictions)
        return [dataclasses.replace(r, input_base64=None) for r in found]

    records, malformed, new_position, files = read_new_capture(config, source, position,
                                                               since_time, now, check_batch)
    malformed += profiled_bad
    drift: list[dict] = []
    notes: list[str] = []
    current_rows: list[dict] = []
    drift_points = sorted(sampled.items, key=lambda point: point["Time"])
    by_version = counts
    for version in sorted(counts, key=lambda v: (v is None, v or 0)):
        baseline = baselines[version]
        if baseline.statistics is None or baseline.ood_reference is None:
            notes.append(f"version {version}: {baseline.note or 'no baseline'}; "
                         f"{counts[version]} record(s) not checked for drift")
            continue
        rows = rows_by_version.get(version, [])
        current_rows += rows
        if len(rows) < config.monitoring.min_records:
            notes.append(f"version {version}: {len(rows)} record(s) with captured input, fewer "
                         f"than monitoring.min_records={config.monitoring.min_records}: "
                         "no drift verdict")
            continue
        for check in drift_checks(config, baseline, rows):
            drift.append({"ModelVersion": version, **check})

    quality, quality_over_time = quality_checks(config, state, baselines, set(by_version))
    violations = [_drift_violation(c) for c in drift if c["Violation"]]
    violations += [_quality_violation(q) for q in quality if q["Violation"]]

    out = report_dir(config, out_dir, now)
    profile.write_json(out / "constraint_violations.json", {"violations": violations})
    if current_rows:
        profile.write_json(out / "statistics.json", profile.statistics(current_rows))
    alarm = len(violations) >= config.monitoring.alarm_violations
    summary = {
        "EndpointName": config.workflow.endpoint_name, "Source": source,
        "Since": since_time.isoformat() if since_time else None, "Stage": stage,
        "RunTime": now.isoformat(timespec="seconds"), "Files": files, "Records": len(records),
        "FirstInference": records[0].inference_time.isoformat() if records else None,
        "LastInference": records[-1].inference_time.isoformat() if records else None,
        "Versions": {str(v): n for v, n in by_version.items()},
        "Malformed": len(malformed),
        "MalformedLines": [{"File": m.source, "Line": m.line, "Reason": m.reason}
                           for m in malformed[:50]],
        "Drift": drift, "Quality": quality, "QualityOverTime": quality_over_time,
        "Notes": notes, "Violations": len(violations), "Alarm": alarm,
        "AlarmThreshold": config.monitoring.alarm_violations,
        "ConstraintViolations": str(out / "constraint_violations.json"),
    }
    metrics = emit_metrics(config, summary, now)

    if records:
        plots = plot_run(records, drift_points, baselines, quality_over_time, config, out)
    else:  # no new traffic, but labels may have come in for earlier traffic
        plots = {"quality_over_time": plot_quality(quality_over_time, out)} \
            if quality_over_time else {}
    summary["Report"] = str(out / "report.md")
    profile.write_json(out / "summary.json", summary)
    (out / "report.md").write_text(_markdown(summary, plots, violations))
    state.save_position({**new_position, "Source": source, "LastRunTime": summary["RunTime"]})
    return MonitorResult(out, violations, summary, metrics, plots)


def _drift_violation(check: dict) -> dict:
    return {"feature_name": check["FeatureName"], "constraint_check_type": DRIFT_CHECK,
            "description": (
                f"Baseline drift distance ({check['Method']}) {check['Distance']:.4f} exceeds "
                f"threshold {check['Threshold']:.4f} for model version {check['ModelVersion']}: "
                f"{check['Statistic']} over {check['Records']} records vs baseline "
                f"{check['Baseline']} over {check['BaselineRecords']}")}


def _quality_violation(quality: dict) -> dict:
    low, high = quality["AccuracyInterval"]
    return {"feature_name": "accuracy", "constraint_check_type": QUALITY_CHECK,
            "description": (
                f"Accuracy {quality['Accuracy']:.4f} (95% interval {low:.4f}-{high:.4f}, "
                f"{quality['Records']} labelled records) of model version "
                f"{quality['ModelVersion']} is below threshold {quality['Threshold']:.4f} "
                f"(registered accuracy {quality['RegisteredAccuracy']:.4f} minus the tolerance)")}


# --- metrics ------------------------------------------------------------------------------------------

def metric_data(config: Config, summary: dict, now: datetime) -> list[dict]:
    """PutMetricData's MetricData: violations and records per run, drift per feature and
    version (named as Model Monitor names them: feature_baseline_drift_<feature>), accuracy."""
    endpoint = [{"Name": "Endpoint", "Value": config.workflow.endpoint_name}]
    data = [{"MetricName": VIOLATIONS_METRIC, "Dimensions": endpoint, "Timestamp": now,
             "Value": float(summary["Violations"]), "Unit": "Count"},
            {"MetricName": "Records", "Dimensions": endpoint, "Timestamp": now,
             "Value": float(summary["Records"]), "Unit": "Count"},
            {"MetricName": "MalformedRecords", "Dimensions": endpoint, "Timestamp": now,
             "Value": float(summary["Malformed"]), "Unit": "Count"}]
    for check in summary["Drift"]:
        data.append({"MetricName": f"feature_baseline_drift_{check['FeatureName']}",
                     "Dimensions": endpoint + [{"Name": "ModelVersion",
                                                "Value": str(check["ModelVersion"])}],
                     "Timestamp": now, "Value": float(check["Distance"]), "Unit": "None"})
    for quality in summary["Quality"]:
        data.append({"MetricName": "accuracy",
                     "Dimensions": endpoint + [{"Name": "ModelVersion",
                                                "Value": str(quality["ModelVersion"])}],
                     "Timestamp": now, "Value": float(quality["Accuracy"]), "Unit": "None"})
    return data


def emit_metrics(config: Config, summary: dict, now: datetime) -> list[dict]:
    """CloudWatch PutMetricData: to CloudWatch on AWS, to the monitor's metrics.jsonl in the
    workspace locally (the backend's cloudwatch client)."""
    data = metric_data(config, summary, now)
    client = backend_for(config).client("cloudwatch")
    for start in range(0, len(data), 500):  # PutMetricData takes up to 1000 values
        client.put_metric_data(Namespace=config.monitoring.metrics_namespace,
                               MetricData=data[start:start + 500])
    return data


# --- retraining ----------------------------------------------------------------------------------------

def retraining_decision(config: Config, result: MonitorResult, now: datetime | None = None
                        ) -> tuple[bool, str]:
    """(start now?, why). Only a run whose violations reach the alarm starts retraining, and
    not within monitoring.retrain_cooldown_hours of the last start."""
    now = now or datetime.now(timezone.utc)
    if not result.alarm:
        return False, (f"{len(result.violations)} violation(s), below the alarm threshold of "
                       f"{config.monitoring.alarm_violations}: no retraining")
    last = MonitorState(config)._read(MonitorState(config).retraining_file, {})
    started = last.get("StartTime")
    if started:
        until = datetime.fromisoformat(started) + timedelta(
            hours=config.monitoring.retrain_cooldown_hours)
        if now < until:
            return False, (f"retraining run {last.get('ExecutionId')} started {started}; "
                           f"cool-down until {until.isoformat(timespec='seconds')} "
                           "(monitoring.retrain_cooldown_hours)")
    return True, f"{len(result.violations)} violation(s) reached the alarm: retraining"


def record_retraining(config: Config, execution_id: str | None, status: str | None,
                      result: MonitorResult, now: datetime | None = None) -> dict:
    """Note a retraining start: the cool-down runs from now."""
    state = MonitorState(config)
    state.folder.mkdir(parents=True, exist_ok=True)
    record = {"StartTime": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
              "ExecutionId": execution_id, "Status": status,
              "Violations": [v["feature_name"] for v in result.violations],
              "MonitoringRun": str(result.out_dir)}
    profile.write_json(state.retraining_file, record)
    return record


# --- report -----------------------------------------------------------------------------------------

def format_run(summary: dict) -> str:
    lines = [f"{summary['Records']} new record(s) in {summary['Files']} file(s)"
             + (f", {summary['FirstInference']} .. {summary['LastInference']}"
                if summary["Records"] else "")
             + (f"; versions {summary['Versions']}" if summary["Versions"] else "")]
    if summary["Malformed"]:
        lines.append(f"malformed lines skipped: {summary['Malformed']}")
    lines += summary["Notes"]
    for check in summary["Drift"]:
        if check["Violation"]:
            lines.append(f"VIOLATION {check['FeatureName']} (v{check['ModelVersion']}): drift "
                         f"{check['Distance']:.3f} > {check['Threshold']:.3f}")
    for quality in summary["Quality"]:
        low, high = quality["AccuracyInterval"]
        flag = "VIOLATION " if quality["Violation"] else ""
        lines.append(f"{flag}accuracy v{quality['ModelVersion']}: {quality['Accuracy']:.3f} "
                     f"[{low:.3f}, {high:.3f}] over {quality['Records']} labelled"
                     + (f", threshold {quality['Threshold']:.3f}"
                        if quality["Threshold"] is not None else ""))
    lines.append(f"{summary['Violations']} violation(s)"
                 + (" - ALARM" if summary["Alarm"] else "") + f": {summary['ConstraintViolations']}")
    return "\n".join(lines)


def _markdown(summary: dict, plots: dict[str, Path], violations: list[dict]) -> str:
    parts = [f"# Monitoring run: endpoint `{summary['EndpointName']}`", "",
             f"Run {summary['RunTime']} over `{summary['Source']}`"
             + (f", stage {summary['Stage']}" if summary["Stage"] else "") + ".", "",
             "```", format_run(summary), "```", ""]
    if violations:
        parts += ["## Violations (constraint_violations.json)", ""]
        parts += [f"- **{v['feature_name']}** ({v['constraint_check_type']}): {v['description']}"
                  for v in violations] + [""]
    if summary["Drift"]:
        parts += ["## Drift against the baseline", "", "```",
                  format_table(["version", "feature", "distance", "threshold", "now", "violation"],
                               [(c["ModelVersion"], c["FeatureName"], f"{c['Distance']:.3f}",
                                 f"{c['Threshold']:.3f}", c["Statistic"][:40],
                                 "yes" if c["Violation"] else "")
                                for c in summary["Drift"]]), "```", ""]
    if summary["Quality"]:
        parts += ["## Model quality (ground truth merged by inferenceId)", "", "```",
                  format_table(["version", "labelled", "accuracy", "95% interval", "threshold"],
                               [(q["ModelVersion"], q["Records"], f"{q['Accuracy']:.3f}",
                                 f"{q['AccuracyInterval'][0]:.3f}-{q['AccuracyInterval'][1]:.3f}",
                                 "-" if q["Threshold"] is None else f"{q['Threshold']:.3f}")
                                for q in summary["Quality"]]), "```", ""]
    for key, title in (("confidence_over_time", "Confidence over time"),
                       ("confidence_histogram", "Confidence per predicted class"),
                       ("drift_over_time", "Features over time against the baseline band"),
                       ("quality_over_time", "Model quality over time")):
        if key in plots:
            parts += [f"![{title}]({plots[key].name})", ""]
    if summary["Malformed"]:
        parts += ["## Malformed lines", ""]
        parts += [f"- `{m['File']}` line {m['Line']}: {m['Reason']}"
                  for m in summary["MalformedLines"]] + [""]
    return "\n".join(parts)
