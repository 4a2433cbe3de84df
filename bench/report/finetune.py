"""The fine-tuning part of a report: the before → after table (each fine-tuned embedder against its base,
on every quality metric both have), the training facts, and the loss curve. Read from results.json only
(embedders[label].finetune, bench.results.TrainingRecord); no torch.
"""

from __future__ import annotations

from html import escape
from typing import Any, Callable

from bench.results import RunResult, TrainingRecord

FINETUNE_WARNING = ("The base weights are random and tiny (generated checkpoints), and the fine-tuned models "
                    "were trained on synthetic shapes for a few seconds: the report demonstrates the harness "
                    "(training, reuse, scoring before and after), it is not a comparison of CLIP and "
                    "Phi-3-vision, nor a measure of what fine-tuning does to a real model.")

BEFORE_AFTER_HEADER = ["fine-tuned", "base", "task", "dataset", "metric", "before", "after", "Δ"]
TRAINING_HEADER = ["fine-tuned", "base", "status", "steps", "batch", "lr", "loss first → last", "wall time",
                   "samples/s", "peak memory", "trainable params", "processes", "checkpoint"]


def finetuned(results: RunResult) -> dict[str, TrainingRecord]:
    """label -> training record, for the fine-tuned embedders of the run (config order)."""
    return {label: e.finetune for label, e in results.embedders.items() if e.finetune is not None}


def synthetic_warning(results: RunResult) -> str:
    """The warning box of a synthetic run: the fine-tuning variant when the run fine-tuned a model."""
    from bench.report.tables import SYNTHETIC_WARNING

    return FINETUNE_WARNING if finetuned(results) else SYNTHETIC_WARNING


def _num(v: float | None, unit: str) -> str:
    from bench.report.tables import format_value

    return format_value(v, unit)


def _delta(before: float | None, after: float | None, unit: str, higher_is_better: bool) -> str:
    if before is None or after is None:
        return "n/a"
    d = after - before
    sign = "+" if d > 0 else ("−" if d < 0 else "±")
    mag = f"{abs(d):.2f} pp" if unit == "%" else _num(abs(d), unit)
    better = (d > 0) == higher_is_better if d else None
    return f"{sign}{mag}" + ("" if better is None else (" ↑" if better else " ↓"))


def before_after_rows(results: RunResult) -> list[list[str]]:
    """One row per quality metric that a fine-tuned embedder and its base both recorded: before (base),
    after (fine-tuned), and the change (pp for percentages; ↑ better, ↓ worse by the metric's
    direction)."""
    values = {(m.embedder, m.task, m.dataset, m.key): m for m in results.metrics if m.kind == "quality"}
    rows = []
    for label, rec in finetuned(results).items():
        for (emb, task, ds, key), m in values.items():
            if emb != label:
                continue
            b = values.get((rec.base, task, ds, key))
            if b is None:
                continue
            unit = m.unit
            rows.append([label, rec.base, task, ds, key + (f" ({unit})" if unit and unit != "%" else ""),
                         _num(b.value, unit), _num(m.value, unit),
                         _delta(b.value, m.value, unit, m.higher_is_better)])
    return rows


def training_rows(results: RunResult) -> list[list[str]]:
    rows = []
    for label, rec in finetuned(results).items():
        params = (rec.model_extra or {}).get("params") or {}
        first = rec.history[0].loss if rec.history else None
        loss = f"{_num(first, '')} → {_num(rec.final_loss, '')}"
        status = "reused (fingerprint match)" if rec.reused else "trained in this run"
        rows.append([label, rec.base, status, str(params.get("steps", "?")),
                     str(params.get("batch_size", "?")),
                     str(params.get("lr", "?")), loss, _num(rec.wall_s, "s"), _num(rec.samples_per_s, ""),
                     _num(rec.peak_rss_mb, "MB"),
                     f"{rec.trainable_params or 0:,} of {rec.total_params or 0:,}",
                     str(rec.num_processes or 1), rec.checkpoint or ""])
    return rows


INTRO = ("Each fine-tuned model is scored as one more embedder on every task; the table compares it with "
         "the model it was fine-tuned from (before = base, after = fine-tuned, Δ = after − before; "
         "↑ better, ↓ worse).")


def finetune_md(results: RunResult, _md_table: Callable[..., list[str]]) -> list[str]:
    """The report.md section (empty when nothing was fine-tuned); markdown passes its table renderer."""
    if not finetuned(results):
        return []
    lines = ["## Fine-tuning: before → after", "", INTRO, ""]
    lines += _md_table(BEFORE_AFTER_HEADER, before_after_rows(results)) + [""]
    lines += ["### Training", ""] + _md_table(TRAINING_HEADER, training_rows(results)) + [""]
    return lines


def finetune_html(results: RunResult, _table: Callable[..., str]) -> str:
    """The report.html section ('' when nothing was fine-tuned); html passes its table renderer."""
    if not finetuned(results):
        return ""
    return "\n".join([
        "<h2>Fine-tuning: before → after</h2>", f'<p class="muted">{escape(INTRO)}</p>',
        _table(BEFORE_AFTER_HEADER, before_after_rows(results), 5),
        "<h3>Training</h3>", _table(TRAINING_HEADER, training_rows(results), 3)])


def loss_curves(results: RunResult) -> list[Any]:
    """Training (and validation) loss against step, one line per fine-tuned embedder."""
    records = {label: rec for label, rec in finetuned(results).items() if rec.history}
    if not records:
        return []
    from bench.report.plots import Plot, _color, _plt, _png

    labels = list(results.embedders)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label, rec in records.items():
        steps = [h.step for h in rec.history]
        color = _color(labels, label)
        ax.plot(steps, [float("nan") if h.loss is None else h.loss for h in rec.history], marker="o",
                markersize=3, label=f"{label} train", color=color)
        if any(h.val_loss is not None for h in rec.history):
            ax.plot(steps, [float("nan") if h.val_loss is None else h.val_loss for h in rec.history],
                    linestyle="--", label=f"{label} validation", color=color)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("InfoNCE loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Fine-tuning loss")
    return [Plot("Fine-tuning loss", f"training loss against step for {', '.join(records)}", _png(fig))]
