"""The report's plots, drawn by matplotlib and returned as inline SVG markup.

Figures are made with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot:
no display backend is chosen and no global figure state is kept. Text stays text in the SVG
(``svg.fonttype = none``: labels are searchable and no font is embedded or fetched), and
the XML prologue, DOCTYPE and metadata are dropped so the markup can sit inside HTML with
no external reference.
"""

import io
import re
from collections.abc import Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CANDIDATE_COLOR = "#0969da"
BASELINE_COLOR = "#bc4c00"
DIAGONAL = {"color": "#999999", "linestyle": "--", "linewidth": 1}

Series = tuple[str, Sequence[tuple[float, float]]]
"""A labelled line: (legend label, (x, y) points)."""


def _figure(width: float = 4.8, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_svg(fig: Figure) -> str:
    """``fig`` as an ``<svg>`` element for inlining in HTML."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # no <?xml ...?> and no DOCTYPE (it names a DTD URL)
    return re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.DOTALL).strip()


def roc_svg(curves: Sequence[Series]) -> str:
    """ROC curves (false positive rate, true positive rate), one line each, with the
    chance diagonal; the first curve is the candidate's."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="chance", **DIAGONAL)
    for i, (label, points) in enumerate(curves):
        xs, ys = zip(*points, strict=True) if points else ((), ())
        color = CANDIDATE_COLOR if i == 0 else BASELINE_COLOR
        ax.plot(xs, ys, label=label, color=color, linewidth=2 if i == 0 else 1.5)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("ROC")
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return to_svg(fig)


def calibration_svg(tables: Sequence[Series]) -> str:
    """Calibration: per score decile the mean prediction (x) against the observed click
    rate (y), one line per model, with the diagonal of a perfectly calibrated model. Both
    axes span [0, the largest value] so rare clicks do not crowd a corner."""
    fig = _figure()
    ax = fig.add_subplot()
    top = max((max(x, y) for _, points in tables for x, y in points), default=1.0)
    top = min(max(top * 1.05, 1e-6), 1.0)
    ax.plot([0, top], [0, top], label="perfectly calibrated", **DIAGONAL)
    for i, (label, points) in enumerate(tables):
        xs, ys = zip(*points, strict=True) if points else ((), ())
        color = CANDIDATE_COLOR if i == 0 else BASELINE_COLOR
        ax.plot(xs, ys, marker="o", markersize=4, label=label, color=color)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean prediction", ylabel="observed click rate")
    ax.set_title("Calibration per score decile")
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return to_svg(fig)


def training_svg(history: Sequence[dict]) -> str | None:
    """Per-epoch training curves from a model's ``history`` records: the losses
    (``train_loss``, ``eval_logloss``, any ``*loss`` key) in one panel, the AUCs
    (``eval_auc``, ...) in another; a key is drawn at the epochs that have it. None when
    no record holds a loss or an AUC."""
    panels = {"loss": [], "AUC": []}
    for record in history:
        for key, value in record.items():
            if not _number(value):
                continue
            panel = "loss" if key.endswith("loss") else "AUC" if key.endswith("auc") else None
            if panel and key not in panels[panel]:
                panels[panel].append(key)
    panels = {name: keys for name, keys in panels.items() if keys}
    if not panels:
        return None
    fig = _figure(4.4 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    for ax, (name, keys) in zip(axes, panels.items(), strict=True):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in history if _number(r.get(key))]
            ax.plot(*zip(*points, strict=True), marker="o", markersize=4, label=key)
        ax.set(xlabel="epoch", ylabel=name)
        ax.set_title(f"{name} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return to_svg(fig)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
