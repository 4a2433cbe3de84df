"""Matplotlib figures for the HTML report, returned as PNG bytes (Agg backend, imported lazily).

Every function takes a RunResult and returns a list of `Plot`s; a plot whose data is missing
(an image-only embedder has no recall curve, a run without a speed task has no scatter) is skipped.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from bench.results import RunResult, as_result

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Plot:
    title: str
    alt: str
    png: bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _color(labels: list[str], label: str) -> str:
    return _COLORS[labels.index(label) % len(_COLORS)] if label in labels else "#555555"


def _intervals(results: RunResult) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(embedder, dataset, key) -> bootstrap interval, for the error bars."""
    return {(m.embedder, m.dataset, m.key): (m.ci_low, m.ci_high) for m in results.metrics
            if m.ci_low is not None and m.ci_high is not None}


def _yerr(values: list[float], cis: list[tuple[float, float] | None]):
    """matplotlib's asymmetric yerr [[below], [above]] (None when no value has an interval)."""
    if not any(ci is not None for ci in cis):
        return None
    pairs = [(v, ci) if ci is not None and not math.isnan(v) else (0.0, (0.0, 0.0))
             for v, ci in zip(values, cis)]
    below = [max(v - ci[0], 0.0) for v, ci in pairs]
    above = [max(ci[1] - v, 0.0) for v, ci in pairs]
    return [below, above]


def recall_curves(results: RunResult) -> list[Plot]:
    """Recall@k against k, one panel per direction, one line per embedder, per retrieval dataset; error
    bars: the bootstrap intervals."""
    labels = list(results.embedders)
    per_ds = results.curves()
    ci = _intervals(results)
    plots = []
    plt = _plt()
    for ds, by_label in per_ds.items():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
        for ax, direction, name in ((axes[0], "i2t", "image → text"), (axes[1], "t2i", "text → image")):
            for label, d in by_label.items():
                ys = [math.nan if y is None else y for y in getattr(d, direction)]
                err = _yerr(ys, [ci.get((label, ds, f"retrieval/{direction}_recall@{k:g}")) for k in d.ks])
                ax.errorbar(d.ks, ys, yerr=err, marker="o", label=label, color=_color(labels, label),
                            capsize=3)
            ax.set_title(name)
            ax.set_xlabel("k")
            ax.set_xscale("log")
            ax.set_xticks(next(iter(by_label.values())).ks)
            ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("recall@k (%)")
        axes[1].legend(fontsize=8)
        fig.suptitle(f"Retrieval recall@k: {ds}", y=1.03)  # above the panel titles, not over them
        plots.append(Plot(f"Recall@k: {ds}", f"recall@k curves on {ds} for {', '.join(by_label)}", _png(fig)))
    return plots


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], labels: list[str],
                  errors: dict[str, list[tuple[float, float] | None]] | None = None) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        err = _yerr(ys, (errors or {}).get(label, [None] * len(ys)))
        bars = ax.bar(xs, ys, width, label=label, color=_color(labels, label), yerr=err, capsize=3)
        for bar, v in zip(bars, values):
            if v is None:
                ax.text(bar.get_x() + bar.get_width() / 2, 1, "n/a", ha="center", va="bottom", fontsize=7,
                        rotation=90)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=7, rotation=30, ha="right")


def accuracy_bars(results: RunResult) -> list[Plot]:
    """Linear-probe and zero-shot headline accuracies, grouped by metric, one bar per embedder; error
    bars: the bootstrap intervals."""
    labels = list(results.embedders)
    wanted = ("probe/top1", "probe/mAP", "probe/mean_per_class_recall", "zeroshot/top1",
              "zeroshot/mean_per_class_recall")
    groups: list[str] = []
    values: dict[tuple[str, str], float | None] = {}
    cis: dict[tuple[str, str], tuple[float, float]] = {}
    for m in results.metrics:
        if m.key in wanted:
            g = f"{m.key}\n{m.dataset}"
            if g not in groups:
                groups.append(g)
            values[(g, m.embedder)] = m.value
            if m.ci_low is not None and m.ci_high is not None:
                cis[(g, m.embedder)] = (m.ci_low, m.ci_high)
    if not groups:
        return []
    used = [lb for lb in labels if any((g, lb) in values for g in groups)]
    series = {lb: [values.get((g, lb)) for g in groups] for lb in used}
    errors = {lb: [cis.get((g, lb)) for g in groups] for lb in used}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2), 3.8))
    _grouped_bars(ax, groups, series, labels, errors)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Linear probe and zero-shot accuracy")
    return [Plot("Linear probe and zero-shot accuracy",
                 f"bar chart of {len(groups)} accuracy metrics for {', '.join(used)}", _png(fig))]


def speed_memory(results: RunResult) -> list[Plot]:
    """End-to-end images/s against peak memory, one point per embedder and speed dataset; a point's label
    carries the model-only % of the device's matmul peak when the run measured it (speed/peak_fraction)."""
    labels = list(results.embedders)
    pts: dict[tuple[str, str], dict[str, float]] = {}
    for m in results.metrics:
        if m.value is None:
            continue
        if m.key in ("speed/images_per_s", "memory/peak_allocated_mib", "memory/peak_rss_mib",
                     "speed/peak_fraction"):
            pts.setdefault((m.embedder, m.dataset), {})[m.key] = m.value
    pts = {k: v for k, v in pts.items() if "speed/images_per_s" in v
           and ("memory/peak_allocated_mib" in v or "memory/peak_rss_mib" in v)}
    if not pts:
        return []
    gpu = any("memory/peak_allocated_mib" in v for v in pts.values())
    mem_key = "memory/peak_allocated_mib" if gpu else "memory/peak_rss_mib"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, ds), v in pts.items():
        if mem_key not in v:
            continue
        ax.scatter(v[mem_key], v["speed/images_per_s"], s=60, color=_color(labels, label), label=f"{label} ({ds})")
        frac = v.get("speed/peak_fraction")
        text = label if frac is None else f"{label}: {frac:.2g}% of peak"
        ax.annotate(text, (v[mem_key], v["speed/images_per_s"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.set_xlabel("peak GPU memory allocated (MiB)" if gpu else "peak resident memory of the process (MiB)")
    ax.set_ylabel("images/s end to end")
    ax.set_yscale("log")  # tiny and large models differ by orders of magnitude
    ys = [v["speed/images_per_s"] for v in pts.values() if mem_key in v and v["speed/images_per_s"] > 0]
    xs = [v[mem_key] for v in pts.values() if mem_key in v]
    if ys:  # room around the extreme points, so that no point or label sits on the frame
        ax.set_ylim(min(ys) / 1.6, max(ys) * 1.6)
    if xs:
        pad = 0.08 * (max(xs) - min(xs)) or 0.1 * max(abs(max(xs)), 1.0)
        ax.set_xlim(min(xs) - pad, max(xs) + 2 * pad)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 200, not 2×10²
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Throughput against peak memory (up and left is better)")
    return [Plot("Throughput against peak memory", "scatter of end-to-end images per second against peak memory, "
                 f"one point per embedder: {', '.join(sorted({k[0] for k in pts}))}", _png(fig))]


def per_class(results: RunResult) -> list[Plot]:
    """Per-class probe accuracy (or AP for multi-label data), one bar per embedder per class."""
    labels = list(results.embedders)
    per_ds = results.per_class()
    plots = []
    plt = _plt()
    for ds, by_label in per_ds.items():
        first = next(iter(by_label.values()))
        field = "per_class_accuracy" if first.per_class_accuracy is not None else "per_class_ap"
        names = first.class_names
        # percent, None = absent; an embedder without the figure (or with fewer classes) gets n/a bars
        series = {label: _padded(getattr(d, field) or [], len(names)) for label, d in by_label.items()}
        plt_h = max(3.0, 0.35 * len(names) * max(1, len(series)) / 2 + 1)
        if len(names) > 40:  # a long tail of classes: keep the picture readable
            names = names[:40]
            series = {k: v[:40] for k, v in series.items()}
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) * len(series) + 2), min(plt_h, 5)))
        _grouped_bars(ax, names, series, labels)
        what = "accuracy" if field == "per_class_accuracy" else "average precision"
        ax.set_ylabel(f"{what} (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Linear probe per-class {what}: {ds}")
        plots.append(Plot(f"Per-class probe {what}: {ds}", f"per-class {what} of the linear probe on {ds}", _png(fig)))
    return plots


def _padded(values: list[float | None], n: int) -> list[float | None]:
    return (list(values) + [None] * n)[:n]


def all_plots(results: RunResult | dict[str, Any]) -> list[Plot]:
    results = as_result(results)
    return [*recall_curves(results), *accuracy_bars(results), *speed_memory(results), *per_class(results)]


def history_plots(series: dict[str, list[tuple[str, float | None]]], per_figure: int = 12) -> list[Plot]:
    """Small multiples: one panel per metric series (x = run labels in time order)."""
    plt = _plt()
    plots = []
    items = list(series.items())
    for start in range(0, len(items), per_figure):
        chunk = items[start:start + per_figure]
        cols = 3
        rows = (len(chunk) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
        for ax, (name, points) in zip(axes.flat, chunk):
            xs = list(range(len(points)))
            ys = [float("nan") if v is None else v for _, v in points]
            ax.plot(xs, ys, marker="o")
            ax.set_title(name, fontsize=8)
            ax.set_xticks(xs)
            ax.set_xticklabels([p[0] for p in points], fontsize=6, rotation=30, ha="right")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        fig.tight_layout()
        plots.append(Plot(f"History {start // per_figure + 1}",
                          f"history of {len(chunk)} metrics over runs", _png(fig)))
    return plots
