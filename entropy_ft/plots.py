"""Plots for artifacts: self-contained HTML reports (inline SVG) and PNG bytes (for MLflow).

Figures are built on :class:`matplotlib.figure.Figure` directly, without pyplot: no global
state, no GUI backend, safe inside KFP components and worker threads. The generic
helpers (:func:`bar_figure`, :func:`line_figure`, :func:`image_grid`, :func:`write_report`) share one style,
so every step's report looks alike; :func:`entropy_figure` is the profile/selection chart.
"""

from __future__ import annotations

import html
import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

BASE_COLOR = "#9aa5b1"
HIGHLIGHT_COLOR = "#d9480f"
LINE_COLORS = ("#1c7ed6", "#d9480f", "#2b8a3e", "#7048e8", "#e67700", "#495057")
_RC = {"svg.fonttype": "none", "svg.hashsalt": "entropy-ft", "font.size": 9}


def bar_figure(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    errors: Sequence[float] | None = None,
    highlight: Collection[str] = (),
    legend: tuple[str, str] | None = None,
    hline: tuple[float | Sequence[float], str] | None = None,
) -> Figure:
    """One bar per label; bars named in ``highlight`` stand out.

    ``legend`` names (plain bars, highlighted bars); ``hline`` is (value, label) for a
    reference line such as the mean, or (one value per bar, label) for one that steps from bar
    to bar, such as each stage's mean.
    """
    fig = Figure(figsize=(max(6.0, 0.3 * len(labels) + 2.0), 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = [HIGHLIGHT_COLOR if label in highlight else BASE_COLOR for label in labels]
    ax.bar(range(len(labels)), values, yerr=errors, color=colors, ecolor="#343a40", capsize=2)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    handles = []
    if legend is not None:
        handles += [Patch(color=BASE_COLOR, label=legend[0]), Patch(color=HIGHLIGHT_COLOR, label=legend[1])]
    if hline is not None:
        line = {"color": "#343a40", "linestyle": "--", "linewidth": 1, "label": hline[1]}
        if isinstance(hline[0], Sequence):
            handles += ax.plot([x for i in range(len(labels)) for x in (i - 0.5, i + 0.5)],
                               [y for y in hline[0] for _ in range(2)], **line)
        else:
            handles.append(ax.axhline(hline[0], **line))
    if handles:
        fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), frameon=False)
    _style(ax, title, ylabel)
    return fig


def line_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """One marked line per named series over a shared x axis (e.g. accuracy against noise sigma)."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, ys) in enumerate(series.items()):
        ax.plot(x, ys, marker="o", color=LINE_COLORS[i % len(LINE_COLORS)], label=name)
    ax.set_xlabel(xlabel)
    if len(series) > 1:
        fig.legend(loc="outside upper right", ncols=min(len(series), 4), frameon=False)
    _style(ax, title, ylabel)
    return fig


Cell = tuple[np.ndarray, str, str]  # uint8 HxWx3 image, caption, caption colour


def image_grid(rows: Sequence[tuple[str, Sequence[Cell | None]]], *, title: str) -> Figure:
    """Images in labelled rows (e.g. one row per class); a ``None`` cell stays blank.

    Each row is (label, cells); captions sit above their image in their own colour."""
    cols = max((len(cells) for _, cells in rows), default=1) or 1
    fig = Figure(figsize=(1.9 * cols + 0.6, 2.1 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for (label, cells), line in zip(rows, axes):
        line[0].set_ylabel(label, fontsize=10)
        for ax, cell in zip(line, [*cells, *[None] * (cols - len(cells))]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(cell is not None)
            if cell is not None:
                image, caption, colour = cell
                ax.imshow(image, interpolation="nearest")
                ax.set_title(caption, fontsize=7, color=colour)
    fig.suptitle(title)
    return fig


def _style(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def svg_text(fig: Figure) -> str:
    """The figure as an ``<svg>`` element for inlining (no XML prolog, deterministic ids)."""
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


Table = tuple[Sequence[str], Sequence[Sequence[object]]]  # header, rows
Section = tuple[str, "Figure | Table", Sequence[str]]  # heading, a figure or a table, notes: a further part of a page


def html_page(
    title: str,
    fig: Figure,
    notes: Sequence[str] = (),
    table: Table | None = None,
    sections: Sequence[Section] = (),
) -> str:
    """A self-contained HTML page: title, notes, the figure inline as SVG, an optional table, then
    further sections, each a heading, its notes and its figure."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#212529}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{padding:2px 10px;border-bottom:1px solid #dee2e6;"
        "text-align:right}td:first-child,th:first-child{text-align:left}svg{max-width:100%;height:auto}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(note)}</p>" for note in notes),
        svg_text(fig),
    ]
    if table is not None:
        parts.append(_table_html(table))
    for heading, body, section_notes in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", *(f"<p>{html.escape(n)}</p>" for n in section_notes),
                  svg_text(body) if isinstance(body, Figure) else _table_html(body)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table_html(table: Table) -> str:
    headers, rows = table
    header_cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header_cells}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    out_dir: Path,
    stem: str,
    title: str,
    fig: Figure,
    notes: Sequence[str] = (),
    table: Table | None = None,
    sections: Sequence[Section] = (),
) -> dict[str, str]:
    """Write ``stem.html`` and ``stem.png`` (the main figure) into a (staging) directory; returns their file names."""
    (out_dir / f"{stem}.html").write_text(html_page(title, fig, notes, table, sections))
    (out_dir / f"{stem}.png").write_bytes(png_bytes(fig))
    return {"html": f"{stem}.html", "png": f"{stem}.png"}


def entropy_figure(layers: Sequence[Mapping], selected: Collection[str] | None = None, title: str = "",
                   stages: Mapping[str, str] | None = None) -> Figure:
    """Entropy per layer (profile.json ``layers`` rows) with its batch std and the mean over layers.

    With ``selected`` (a selection exists) those layers are highlighted. With ``stages`` (layer ->
    stage, for a rule that compares layers within their stage) the dashed line is each stage's
    mean, the reference that rule used, instead of the mean over every layer.
    """
    names = [row["name"] for row in layers]
    values = [row["entropy"] for row in layers]
    mean: float | list[float] = sum(values) / len(values)
    label = f"mean {mean:.3f} bits"
    if stages is not None:
        groups: dict[str, list[float]] = {}
        for name, value in zip(names, values, strict=True):
            groups.setdefault(stages[name], []).append(value)
        mean = [sum(groups[stages[n]]) / len(groups[stages[n]]) for n in names]
        label = "mean of its stage"
    return bar_figure(
        names,
        values,
        title=title or "Activation entropy per conv layer",
        ylabel="entropy (bits)",
        errors=[row["entropy_std"] for row in layers],
        highlight=selected or (),
        legend=("frozen", "selected (unfrozen)") if selected is not None else None,
        hline=(mean, label),
    )
