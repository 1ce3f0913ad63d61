"""Plots of a monitoring run that a person can read at a glance.

- The time axis spans the traffic's real time: a few seconds of traffic is drawn in seconds
  since its first record (no calendar axis, no "00.2" ticks); longer spans use dates.
- A change of model version is marked where it happened ("v3 deployed").
- Histograms show counts, with one y-scale for all panels.
- Drift: each feature's median and interquartile range per slice of the run's traffic,
  against the baseline's 5-95% band and median.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from workflow.monitoring import profile

SECONDS_AXIS_UP_TO = timedelta(minutes=5)
DRIFT_PANELS = ("brightness", "contrast", "colourfulness", "ood_score", "confidence")
TIME_SLICES = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class TimeAxis:
    """Maps datetimes to x values and labels the axis for the span at hand."""

    def __init__(self, times: list[datetime]):
        self.start, self.end = min(times), max(times)
        self.in_seconds = self.end - self.start <= SECONDS_AXIS_UP_TO

    def x(self, when: datetime):
        return (when - self.start).total_seconds() if self.in_seconds else when

    def apply(self, ax) -> None:
        import matplotlib.dates as mdates

        span = self.end - self.start
        pad = max(span * 0.04, timedelta(seconds=0.5))
        if self.in_seconds:
            # Capture times are whole seconds: traffic within one second still gets an axis
            # that starts at 0 and spans that second, never negative seconds.
            right = max(span.total_seconds(), 1.0)
            ax.set_xlim(-0.04 * right, 1.04 * right)
            ax.set_xlabel(f"seconds since {self.start:%Y-%m-%d %H:%M:%S} UTC")
            return
        ax.set_xlim(self.start - pad, self.end + pad)
        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("inference time (UTC)")


def _deployments(records) -> list[tuple[datetime, object]]:
    """(time, version) of each change of serving version within the run."""
    changes = []
    for previous, record in zip(records, records[1:]):
        if record.model_version != previous.model_version:
            changes.append((record.inference_time, record.model_version))
    return changes  # the first record's version was already serving when the run began


def _mark_deployments(ax, axis: TimeAxis, records) -> None:
    for when, version in _deployments(records):
        x = axis.x(when)
        ax.axvline(x, color="black", linewidth=1, linestyle=":")
        ax.annotate(f"v{version} deployed", (x, 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8)


def plot_run(records, drift_points, baselines, quality_over_time, config, out: Path
             ) -> dict[str, Path]:
    plt = _pyplot()
    threshold = config.workflow.confidence_threshold
    classes = config.classes
    axis = TimeAxis([r.inference_time for r in records])
    plots: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(9, 4))
    predicted = [r.probabilities.index(max(r.probabilities)) for r in records]
    ax.scatter([axis.x(r.inference_time) for r in records], [max(r.probabilities) for r in records],
               c=[f"C{i}" for i in predicted], s=14)
    ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
    for i, name in enumerate(classes):
        ax.scatter([], [], c=f"C{i}", s=14, label=f"predicted {name}")
    _mark_deployments(ax, axis, records)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("confidence (max class probability)")
    ax.set_title(f"Endpoint confidence over time ({len(records)} records)")
    ax.legend(loc="lower left", fontsize=8)
    axis.apply(ax)
    fig.tight_layout()
    plots["confidence_over_time"] = out / "confidence_over_time.png"
    fig.savefig(plots["confidence_over_time"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3.5), squeeze=False,
                             sharey=True)
    bins = [i / 20 for i in range(21)]
    for i, (ax, name) in enumerate(zip(axes[0], classes)):
        values = [max(r.probabilities) for r, p in zip(records, predicted) if p == i]
        ax.hist(values, bins=bins, color=f"C{i}")
        ax.axvline(threshold, color="red", linestyle="--")
        ax.set_title(f"predicted {name} (n={len(values)})")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("records (count)")
    fig.tight_layout()
    plots["confidence_histogram"] = out / "confidence_histogram.png"
    fig.savefig(plots["confidence_histogram"], dpi=100)
    plt.close(fig)

    if drift_points:
        plots["drift_over_time"] = _plot_drift(plt, drift_points, baselines, records, out)
    if quality_over_time:
        plots["quality_over_time"] = _plot_quality(plt, quality_over_time, out)
    return plots


def _plot_drift(plt, points, baselines, records, out: Path) -> Path:
    import numpy as np

    axis = TimeAxis([p["Time"] for p in points])
    fig, axes = plt.subplots(len(DRIFT_PANELS), 1, figsize=(9, 2.1 * len(DRIFT_PANELS)),
                             sharex=True)
    points = sorted(points, key=lambda p: p["Time"])
    slices = [s for s in np.array_split(np.arange(len(points)), min(TIME_SLICES, len(points)))
              if len(s)]
    for ax, name in zip(axes, DRIFT_PANELS):
        versions = sorted({p["ModelVersion"] for p in points}, key=lambda v: v or 0)
        for n, version in enumerate(versions):
            baseline = baselines.get(version)
            if baseline is None or baseline.statistics is None:
                continue
            reference = profile.baseline_values(baseline.statistics, name)
            low, mid, high = np.percentile(reference, [5, 50, 95])
            # each version's band over the time it served (its own baseline)
            served = [p["Time"] for p in points if p["ModelVersion"] == version]
            xs_band = [axis.x(min(served)), axis.x(max(served))]
            colour = ("tab:green", "tab:olive", "tab:cyan")[n % 3]
            ax.fill_between(xs_band, [low, low], [high, high], color=colour, alpha=0.2,
                            label=f"baseline v{version} 5-95%")
            ax.plot(xs_band, [mid, mid], color=colour, linewidth=1)
        xs, medians, lows, highs = [], [], [], []
        for index in slices:
            chunk = [points[i] for i in index]
            values = [p[name] for p in chunk]
            middle = chunk[len(chunk) // 2]["Time"]
            xs.append(axis.x(middle))
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            medians.append(q50), lows.append(q50 - q25), highs.append(q75 - q50)
        ax.errorbar(xs, medians, yerr=[lows, highs], fmt="o-", color="tab:blue", markersize=4,
                    capsize=3, label="traffic median (IQR)")
        _mark_deployments(ax, axis, records)
        ax.set_ylabel(name)
        ax.legend(loc="upper left", fontsize=7)
    axes[0].set_title("Monitored features over time against the baseline band")
    axis.apply(axes[-1])
    fig.tight_layout()
    path = out / "drift_over_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_quality(over_time, out: Path) -> Path:
    """Model quality per day and version, with Wilson intervals and each constraint."""
    return _plot_quality(_pyplot(), over_time, out)


def _plot_quality(plt, over_time, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for i, version in enumerate(sorted({q["ModelVersion"] for q in over_time},
                                       key=lambda v: v or 0)):
        rows = [q for q in over_time if q["ModelVersion"] == version]
        days = [q["Day"] for q in rows]
        accuracy = [q["Accuracy"] for q in rows]
        ax.errorbar(days, accuracy,
                    yerr=[[a - q["AccuracyInterval"][0] for a, q in zip(accuracy, rows)],
                          [q["AccuracyInterval"][1] - a for a, q in zip(accuracy, rows)]],
                    fmt="o-", color=f"C{i}", capsize=4,
                    label=f"v{version} accuracy (95% Wilson)")
        if rows[0]["Threshold"] is not None:
            ax.axhline(rows[0]["Threshold"], color=f"C{i}", linestyle="--",
                       label=f"v{version} constraint {rows[0]['Threshold']:.3f}")
        for day, q in zip(days, rows):
            ax.annotate(f"n={q['Records']}", (day, q["Accuracy"]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)
    ax.set_ylim(-0.05, 1.08)
    ax.margins(x=0.12)  # room for the n= labels at both ends
    ax.set_xlabel("day of inference (UTC)")
    ax.set_ylabel("accuracy on labelled records")
    ax.set_title("Model quality over time (ground truth merged by inferenceId)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = out / "quality_over_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
