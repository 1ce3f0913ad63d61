"""What the Studio's pages show, gathered through the same library functions the CLI calls,
on whichever backend the config names (scones.backend decides; nothing here does).

    pipeline graph     from the definition JSON (pipelines.pipeline.pipeline_definition)
    executions         pipelines.executors (the local runner's records or SageMaker's)
    registry           backend.registry() + each version's evaluation.json / baseline
    endpoints          workflow.stages.endpoint_status / stage_test_result
    monitoring         workflow.monitoring.check (capture, baselines, runs' summaries)
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scones.backend import Backend
from scones.config import STAGES, Config
from scones.errors import SconesError
from scones.registry import evaluation_url, model_data_url

# ------------------------------------------------------------------------------ pipeline graph

_GET_STEP = re.compile(r"^Steps\.([^.\[]+)")


@dataclass
class GraphNode:
    name: str
    kind: str
    column: int
    row: int
    branch: str = ""          # "if" / "else" for the condition's branches


@dataclass
class GraphEdge:
    source: str
    target: str
    label: str = ""


def _referenced_steps(value: Any) -> set[str]:
    """Names of the steps a step's arguments read (`{"Get": "Steps.X..."}`): its inputs."""
    found: set[str] = set()
    if isinstance(value, dict):
        get = value.get("Get")
        if isinstance(get, str):
            match = _GET_STEP.match(get)
            if match:
                found.add(match.group(1))
        for item in value.values():
            found |= _referenced_steps(item)
    elif isinstance(value, list):
        for item in value:
            found |= _referenced_steps(item)
    return found


def pipeline_graph(definition: dict) -> tuple[list[GraphNode], list[GraphEdge]]:
    """The steps as a layered graph: an edge for each DependsOn and each property a step
    reads from another; a Condition's IfSteps / ElseSteps hang off it labelled true/false
    (the Fail step is the else branch here)."""
    steps: dict[str, dict] = {}
    edges: list[GraphEdge] = []
    branch_of: dict[str, str] = {}

    def add(step: dict) -> None:
        steps[step["Name"]] = step
        if step.get("Type") == "Condition":
            arguments = step.get("Arguments") or {}
            for key, label in (("IfSteps", "if"), ("ElseSteps", "else")):
                for child in arguments.get(key) or []:
                    add(child)
                    branch_of[child["Name"]] = label
                    edges.append(GraphEdge(step["Name"], child["Name"],
                                           "true" if label == "if" else "false"))

    for step in definition.get("Steps") or []:
        add(step)
    for name, step in steps.items():
        sources = set(step.get("DependsOn") or [])
        arguments = dict(step.get("Arguments") or {})
        if step.get("Type") == "Condition":  # its branches are edges of their own
            arguments = {"Conditions": arguments.get("Conditions")}
        sources |= _referenced_steps(arguments) | _referenced_steps(step.get("PropertyFiles"))
        for source in sorted(sources):
            if source in steps and source != name and name not in branch_of:
                edges.append(GraphEdge(source, name))
    # columns: the longest path from a root
    column: dict[str, int] = {}

    def depth(name: str, seen: frozenset = frozenset()) -> int:
        if name in column:
            return column[name]
        parents = [e.source for e in edges if e.target == name and e.source not in seen]
        column[name] = 0 if not parents else 1 + max(depth(p, seen | {name}) for p in parents)
        return column[name]

    for name in steps:
        depth(name)
    rows: dict[int, int] = {}
    nodes = []
    for name in sorted(steps, key=lambda n: (column[n], branch_of.get(n) != "if")):
        row = rows.get(column[name], 0)
        rows[column[name]] = row + 1
        nodes.append(GraphNode(name, steps[name].get("Type", ""), column[name], row,
                               branch_of.get(name, "")))
    return nodes, edges


def graph_svg_layout(nodes: list[GraphNode], edges: list[GraphEdge],
                     statuses: dict[str, dict] | None = None) -> dict:
    """Coordinates for the template's SVG: boxes, edges as paths, each box's status."""
    width, height, gap_x, gap_y, pad = 196, 54, 46, 30, 16
    boxes = {}
    for node in nodes:
        x = pad + node.column * (width + gap_x)
        y = pad + node.row * (height + gap_y)
        step = (statuses or {}).get(node.name) or {}
        status = step.get("Status") or "NotStarted"
        if status == "Succeeded" and step.get("CacheHitResult"):
            status = "Cached"
        boxes[node.name] = {"name": node.name, "kind": node.kind, "x": x, "y": y,
                            "w": width, "h": height, "status": status,
                            "seconds": step.get("Seconds"), "branch": node.branch}
    lines = []
    for edge in edges:
        a, b = boxes.get(edge.source), boxes.get(edge.target)
        if not a or not b:
            continue
        x1, y1 = a["x"] + a["w"], a["y"] + a["h"] / 2
        x2, y2 = b["x"], b["y"] + b["h"] / 2
        mid = (x1 + x2) / 2
        if b["x"] - a["x"] > a["w"] + gap_x and abs(y1 - y2) < 1:
            # skips a column on the same row: around below the boxes between, not through
            x1, y1 = a["x"] + a["w"] / 2, a["y"] + a["h"]
            x2, y2 = b["x"] + b["w"] / 2, b["y"] + b["h"]
            low = y1 + gap_y * 0.8
            lines.append({"d": f"M{x1},{y1} C{x1},{low} {x2},{low} {x2},{y2}",
                          "label": edge.label, "lx": (x1 + x2) / 2, "ly": low})
            continue
        lines.append({"d": f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}", "label": edge.label,
                      "lx": mid, "ly": (y1 + y2) / 2 - 4})
    total_w = max((b["x"] + b["w"] for b in boxes.values()), default=0) + pad
    total_h = max((b["y"] + b["h"] for b in boxes.values()), default=0) + pad
    return {"boxes": list(boxes.values()), "edges": lines, "width": total_w,
            "height": total_h}


def parameter_fields(definition: dict) -> list[dict]:
    """The run form's fields: each declared parameter with its type and default."""
    return [{"name": p["Name"], "type": p.get("Type", "String"),
             "default": p.get("DefaultValue", "")} for p in definition.get("Parameters") or []]


# ------------------------------------------------------------------------------ registry

def _read_json(backend: Backend, url: str | None) -> dict | None:
    if not url:
        return None
    try:
        return json.loads(backend.object_store().read_bytes(url))
    except Exception:  # gone, unreadable, or an AWS error: the page shows "-" for it
        return None


def execution_of(package: dict) -> str | None:
    """The pipeline execution that registered a version: the id in its evaluation.json URL
    (s3://bucket/<pipeline>/<execution id>/Evaluate/...), as both backends lay it out."""
    url = evaluation_url(package) or ""
    match = re.search(r"/([^/]+)/Evaluate/", url)
    return match.group(1) if match else None


def version_summary(backend: Backend, package: dict, evaluation: dict | None = None) -> dict:
    """One registry row: status, accuracy, ECE, threshold, data snapshot, execution."""
    from workflow.stages import model_threshold

    if evaluation is None:
        evaluation = _read_json(backend, evaluation_url(package)) or {}
    calibration = ((evaluation.get("custom_metrics") or {}).get("calibration") or {})
    ece = calibration.get("ece_after_calibration")
    if isinstance(ece, dict):
        ece = ece.get("value")
    properties = package.get("CustomerMetadataProperties") or {}
    # the data snapshot a version was trained on (CustomerMetadataProperties'
    # DataSnapshotUrl, where the pipeline records one), not its parent's
    snapshot = properties.get("DataSnapshotUrl") or next(
        (v for k, v in properties.items()
         if "snapshot" in k.lower() and not k.lower().startswith("parent")), None)
    return {"Version": package["ModelPackageVersion"],
            "Status": package.get("ModelApprovalStatus"),
            "Description": package.get("ApprovalDescription"),
            "Accuracy": package.get("Accuracy"), "ECE": ece,
            "Threshold": model_threshold(package), "DataSnapshot": snapshot,
            "Execution": execution_of(package),
            "Created": str(package.get("CreationTime") or "")[:19]}


def registry_rows(backend: Backend) -> list[dict]:
    packages = backend.registry().list_packages()
    return [version_summary(backend, p) for p in sorted(
        packages, key=lambda p: p["ModelPackageVersion"], reverse=True)]


# The PNGs of a version, each found beside an artifact the package names (so the same code
# reads the workspace's object store or S3).
PLOTS = {
    "training_curves": "training curves",
    "confusion_matrix": "confusion matrix",
    "reliability_diagram": "reliability diagram",
}


def version_plot(backend: Backend, package: dict, name: str) -> bytes | None:
    """PNG bytes of one of a version's plots (PLOTS), None when it has none."""
    store = backend.object_store()
    if name in ("confusion_matrix", "reliability_diagram"):
        url = evaluation_url(package)
        if not url:
            return None
        try:
            return store.read_bytes(url.rsplit("/", 1)[0] + f"/{name}.png")
        except Exception:
            return None
    if name == "training_curves":
        # the training job's output data (output.tar.gz beside model.tar.gz), as SageMaker
        # packs SM_OUTPUT_DATA_DIR
        url = model_data_url(package)
        if not url:
            return None
        try:
            archive = store.read_bytes(url.rsplit("/", 1)[0] + "/output.tar.gz")
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                member = next((m for m in tar.getmembers()
                               if m.isfile() and m.name.rsplit("/", 1)[-1]
                               == "training_curves.png"), None)
                if member is None or member.size > 10 * 1024 * 1024:
                    return None
                return tar.extractfile(member).read()
        except Exception:
            return None
    return None


def baseline_table(backend: Backend, package: dict) -> list[dict]:
    """The version's drift baseline, one row per monitored feature: the 5/50/95% band of a
    number, the shares of a category, and the drift constraint."""
    import numpy as np

    from workflow.monitoring import profile
    from workflow.monitoring.check import baseline_urls

    statistics_url, constraints_url = baseline_urls(package)
    statistics = _read_json(backend, statistics_url)
    constraints = _read_json(backend, constraints_url) or {}
    if not statistics:
        return []
    threshold = ((constraints.get("monitoring_config") or {})
                 .get("distribution_constraints") or {}).get("comparison_threshold")
    rows = []
    for feature in statistics.get("features", []):
        name = feature.get("name")
        try:
            values = profile.baseline_values(statistics, name)
        except Exception:
            continue
        if isinstance(values, dict):
            band = ", ".join(f"{k} {v:.0%}" for k, v in sorted(values.items()))
        elif len(values):
            low, mid, high = np.percentile(values, [5, 50, 95])
            band = f"{low:.3g} / {mid:.3g} / {high:.3g}"
        else:
            band = "-"
        rows.append({"Feature": name, "Band": band, "Threshold": threshold})
    return rows


def version_details(backend: Backend, version: int | str) -> dict:
    package = backend.registry().describe(version)
    evaluation = _read_json(backend, evaluation_url(package)) or {}
    binary = evaluation.get("binary_classification_metrics") or {}
    metrics = {name: (value or {}).get("value") for name, value in binary.items()
               if isinstance(value, dict) and "value" in value and name != "accuracy"}
    return {"package": package, "summary": version_summary(backend, package, evaluation),
            "metrics": metrics, "baseline": baseline_table(backend, package)}


# ------------------------------------------------------------------------------ endpoints

def endpoint_rows(config: Config, backend: Backend) -> list[dict]:
    """`scones endpoint status`'s content for both stages, with each version's staging test."""
    from workflow.stages import endpoint_status, stage_test_result

    rows = []
    for stage in STAGES:
        status = endpoint_status(config, backend, stage)
        if status.get("ModelPackageArn") and status.get("ModelPackageVersion") is not None:
            package = backend.registry().describe(status["ModelPackageVersion"])
            status["StagingTest"] = stage_test_result(config, backend, package, "staging")
        rows.append(status)
    return rows


# ------------------------------------------------------------------------------ monitoring

def monitoring_runs(config: Config) -> list[dict]:
    """Every monitoring run's summary (reports/monitor-*/summary.json), oldest first."""
    from scones.workspace import Workspace

    runs = []
    for path in sorted(Workspace(config.local.workspace).reports_dir.glob("monitor-*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and "RunTime" in summary:
            # the run's PNGs, as workspace-relative paths for /artifacts/
            summary["Plots"] = sorted(p.relative_to(path.parent.parent.parent).as_posix()
                                      for p in path.parent.glob("*.png"))
            runs.append(summary)
    return sorted(runs, key=lambda s: s["RunTime"])


def retraining_record(config: Config) -> dict | None:
    from workflow.monitoring.check import MonitorState

    state = MonitorState(config)
    try:
        return json.loads(state.retraining_file.read_text())
    except (OSError, ValueError):
        return None


def drift_points(config: Config, max_records: int = 5000) -> tuple[list[dict], dict]:
    """Every captured record's monitored features (as `monitor run` computes them) and each
    version's baseline band: ([{"Time", "ModelVersion", feature: value...}],
    {version: {feature: (p5, p50, p95)}})."""
    import numpy as np

    from workflow.monitoring import default_source, profile
    from workflow.monitoring.check import feature_rows, load_baseline, read_new_capture
    from workflow.monitoring.plots import DRIFT_PANELS

    records, _, _, _ = read_new_capture(config, default_source(config), {}, None)
    records = records[-max_records:]
    by_version: dict[Any, list] = {}
    for record in records:
        by_version.setdefault(record.model_version, []).append(record)
    points, bands = [], {}
    for version, group in by_version.items():
        baseline = load_baseline(config, version)
        if baseline.statistics is None or baseline.ood_reference is None:
            continue
        pairs, _ = feature_rows(group, config.classes, baseline.ood_reference)
        points += [{"Time": r.inference_time.isoformat(), "ModelVersion": version, **row}
                   for r, row in pairs]
        bands[version] = {}
        for name in DRIFT_PANELS:
            try:
                values = profile.baseline_values(baseline.statistics, name)
            except Exception:
                continue
            if not isinstance(values, dict) and len(values):
                bands[version][name] = tuple(float(v) for v in np.percentile(values, [5, 50, 95]))
    points.sort(key=lambda p: p["Time"])
    return points, bands


def drift_figures(points: list[dict], bands: dict) -> list[dict]:
    """One interactive plotly figure per monitored feature: each record's value over time,
    each version's 5-95% baseline band behind it (hover shows values; drag zooms on time)."""
    import plotly.graph_objects as go

    from workflow.monitoring.plots import DRIFT_PANELS

    figures = []
    versions = sorted({p["ModelVersion"] for p in points}, key=lambda v: v or 0)
    colours = ("rgba(46,160,67,0.18)", "rgba(191,135,0,0.18)", "rgba(9,105,218,0.15)")
    for name in DRIFT_PANELS:
        if not any(name in p for p in points):
            continue
        fig = go.Figure()
        for n, version in enumerate(versions):
            mine = [p for p in points if p["ModelVersion"] == version and name in p]
            band = (bands.get(version) or {}).get(name)
            if mine and band:
                low, mid, high = band
                start, end = _padded(mine[0]["Time"], mine[-1]["Time"])
                fig.add_trace(go.Scatter(
                    x=[start, end, end, start], y=[low, low, high, high], fill="toself",
                    mode="lines", fillcolor=colours[n % 3], line={"width": 0},
                    hoverinfo="skip", name=f"v{version} baseline 5-95%"))
                fig.add_trace(go.Scatter(x=[start, end], y=[mid, mid], mode="lines",
                                         line={"dash": "dot", "width": 1},
                                         name=f"v{version} baseline median"))
            if mine:
                fig.add_trace(go.Scatter(
                    x=[p["Time"] for p in mine], y=[p[name] for p in mine], mode="markers",
                    marker={"size": 5, "color": ("#0969da", "#bf3989", "#1a7f37")[n % 3]},
                    name=f"v{version} traffic",
                    hovertemplate=f"%{{x}}<br>{name} %{{y:.4f}}<extra>v{version}</extra>"))
        fig.update_layout(title={"text": name, "font": {"size": 14}}, height=260,
                          margin={"l": 50, "r": 10, "t": 36, "b": 30},
                          xaxis={"type": "date"}, legend={"font": {"size": 10}})
        figures.append({"id": f"drift-{name}", "figure": _plain(fig)})
    return figures


def _padded(start: str, end: str) -> tuple[str, str]:
    """A version's time span widened a little (a burst of traffic in one second still shows
    its band), as ISO times."""
    from datetime import datetime, timedelta

    first, last = datetime.fromisoformat(start), datetime.fromisoformat(end)
    pad = max((last - first) * 0.05, timedelta(seconds=30))
    return (first - pad).isoformat(), (last + pad).isoformat()


def run_figures(runs: list[dict]) -> list[dict]:
    """Violations per run and quality over time (from labels), interactive."""
    import plotly.graph_objects as go

    figures = []
    if runs:
        fig = go.Figure(go.Scatter(x=[r["RunTime"] for r in runs],
                                   y=[r.get("Violations", 0) for r in runs], name="violations",
                                   mode="lines+markers", marker={"size": 9}))
        threshold = runs[-1].get("AlarmThreshold")
        if threshold is not None:
            fig.add_hline(y=threshold, line_dash="dash", line_color="red",
                          annotation_text="alarm")
        fig.update_layout(title={"text": "violations per monitoring run", "font": {"size": 14}},
                          height=240, margin={"l": 50, "r": 10, "t": 36, "b": 30})
        figures.append({"id": "violations", "figure": _plain(fig)})
    quality = (runs[-1].get("QualityOverTime") if runs else None) or []
    if quality:
        fig = go.Figure()
        for version in sorted({q["ModelVersion"] for q in quality}, key=lambda v: v or 0):
            rows = [q for q in quality if q["ModelVersion"] == version]
            fig.add_trace(go.Scatter(
                x=[q["Day"] for q in rows], y=[q["Accuracy"] for q in rows],
                mode="lines+markers", name=f"v{version} accuracy",
                error_y={"type": "data", "symmetric": False,
                         "array": [q["AccuracyInterval"][1] - q["Accuracy"] for q in rows],
                         "arrayminus": [q["Accuracy"] - q["AccuracyInterval"][0]
                                        for q in rows]}))
        fig.update_layout(title={"text": "model quality over time (labelled records)",
                                 "font": {"size": 14}}, height=260, yaxis={"range": [0, 1.05]},
                          margin={"l": 50, "r": 10, "t": 36, "b": 30})
        figures.append({"id": "quality", "figure": _plain(fig)})
    return figures


def _plain(fig) -> dict:
    """The figure for Plotly.newPlot, without plotly.py's theme (20 KB a chart; plotly.js's
    own defaults look the same)."""
    figure = fig.to_plotly_json()
    figure["layout"].pop("template", None)
    return figure


def workspace_file(root: Path, relative: str) -> Path:
    """A file under the workspace named by a relative path; SconesError for anything that
    leaves it (`..`, an absolute path, a link pointing out) or is not a plain file."""
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        raise ArtifactRefused("artifact paths are relative to the workspace")
    parts = Path(relative).parts
    if ".." in parts:
        raise ArtifactRefused("artifact paths may not contain '..'")
    root = root.resolve()
    path = (root / relative).resolve()
    try:
        path.relative_to(root)
    except ValueError:
        raise ArtifactRefused("artifact paths must stay inside the workspace") from None
    if not path.is_file():
        raise ArtifactRefused("no such artifact in the workspace")
    return path


class ArtifactRefused(SconesError):
    """An artifact path that is not a file inside the workspace."""
