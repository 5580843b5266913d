"""One self-contained HTML page per zoo: config, curves, tables beside the paper's, figures.

Figures are embedded as base64 PNG, so the page is a single file that can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from wsjax.store import Zoo, atomic_write_bytes, load_zoo, read_json

__all__ = ["build_report", "render_report", "load_tables"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.paper { color: #777; } .scroll { overflow-x: auto; } th { max-width: 9em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.note { color: #8a5a00; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def load_tables(run_dir: Path, zoo: Zoo | None = None) -> tuple[object | None, str]:
    """The run's tables: tables.json when present, else computed by wsjax.analysis.tables.

    Returns:
        (tables or None, a note saying where they came from or why they are missing).
    """
    path = Path(run_dir) / "tables.json"
    if path.exists():
        return (read_json(path, "recompute it with `python -m experiments.tables --run DIR`"),
                f"from {path.name}")
    try:
        from wsjax.analysis.tables import zoo_tables
    except ImportError:
        return None, ("no tables.json in the run directory; compute it with "
                      "`python -m experiments.tables --run DIR`")
    zoo = zoo if zoo is not None else load_zoo(run_dir)
    return zoo_tables(zoo), "computed for this report"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if v is None:
        return "–"
    return html.escape(str(v))


def _rows_table(rows: list[dict]) -> str:
    """A list of flat row dicts as an HTML table; keys starting with 'paper' get the paper style."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = "".join(
            f"<td{' class=paper' if str(c).startswith('paper') else ''}>{_cell(r.get(c))}</td>"
            for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<div class=scroll><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _tables_html(tables) -> str:
    """Renders whatever structure the tables have: a list of rows, or named lists/dicts of rows."""
    if isinstance(tables, list) and tables and all(isinstance(r, dict) for r in tables):
        return _rows_table(tables)
    if isinstance(tables, dict):
        parts = []
        for name, value in tables.items():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                parts.append(f"<h3>{html.escape(str(name))}</h3>{_rows_table(value)}")
            elif isinstance(value, dict) and value and all(isinstance(r, dict)
                                                           for r in value.values()):
                rows = [{"": k, **r} for k, r in value.items()]
                parts.append(f"<h3>{html.escape(str(name))}</h3>{_rows_table(rows)}")
            else:
                parts.append(f"<p><b>{html.escape(str(name))}</b>: "
                             f"<code>{html.escape(json.dumps(value, default=str))}</code></p>")
        return "".join(parts)
    return f"<pre>{html.escape(json.dumps(tables, indent=1, default=str))}</pre>"


def _config_html(zoo: Zoo) -> str:
    cfg = zoo.config
    rows = []
    for section in ("config", "data"):
        for k, v in (cfg.get(section) or {}).items():
            rows.append({"setting": f"{section}.{k}", "value": json.dumps(v)})
    for k, v in cfg.items():
        if k not in ("config", "data"):
            rows.append({"setting": k, "value": json.dumps(v, default=str)})
    return _rows_table(rows)


def render_report(zoo: Zoo, tables=None, tables_note: str = "",
                  figures: dict | None = None) -> str:
    """The report page as an HTML string.

    Args:
        zoo: the zoo.
        tables: the analysis tables (any JSON structure of row dicts) or None.
        figures: {caption: PNG bytes or a note string}, in display order.
    """
    from wsjax.plots import plot_training_curves

    s, e1, p = zoo.snapshots.shape
    healthy = zoo.healthy()
    acc = zoo.test_accuracy[healthy]
    final = acc[:, -1] if len(acc) else np.array([np.nan])
    data = zoo.config.get("data", {})
    title = f"wsjax zoo report: {zoo.arch}, {data.get('name', '?')}"
    curve, _ = plot_training_curves(acc, f"Test accuracy per epoch, {int(healthy.sum())} seeds")
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{s} models ({s - int(healthy.sum())} diverged), {e1 - 1} epochs, {p} weights per "
        f"snapshot. Final test accuracy: median {np.median(final):.3f}, "
        f"min {np.min(final):.3f}, max {np.max(final):.3f}. "
        f"Data: {html.escape(str(data.get('source', '')))} "
        f"({data.get('n_train', '?')} train / {data.get('n_test', '?')} test images).</p>",
        "<h2>Configuration</h2>", _config_html(zoo),
        "<h2>Training curves</h2>",
        f"<figure><img alt='training curves' src='{_png_data_uri(_fig_png(curve))}'>"
        "<figcaption>Median test accuracy over seeds, with the 10-90% and min-max bands."
        "</figcaption></figure>",
        "<h2>Tables: clustering purity and epoch order (ours beside the paper's)</h2>",
    ]
    if tables is None:
        parts.append(f"<p class=note>{html.escape(tables_note)}</p>")
    else:
        parts.append(f"<p>Tables {html.escape(tables_note)}. Paper values are from its Tables 2 "
                     "(CNN) and 3 (FFNN), trained on full MNIST.</p>")
        parts.append(_tables_html(tables))
    parts.append("<h2>Figures</h2>")
    for caption, content in (figures or {}).items():
        if isinstance(content, bytes):
            parts.append(f"<figure><img alt='{html.escape(caption, quote=True)}' "
                         f"src='{_png_data_uri(content)}'><figcaption>{html.escape(caption)}"
                         "</figcaption></figure>")
        else:
            parts.append(f"<p class=note>{html.escape(caption)} {html.escape(str(content))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, out: str | Path | None = None, make_missing: bool = True,
                 umap: bool = True, progress: bool = True) -> Path:
    """Writes RUN/report.html (or `out`) for a completed run directory and returns its path.

    Figures are read from RUN/figures/ when present there and drawn when missing
    (make_missing); the tables come from RUN/tables.json or are computed.
    """
    from wsjax.plots import FIGURES, make_figures

    run_dir = Path(run_dir)
    zoo = load_zoo(run_dir)
    fig_dir = run_dir / "figures"
    notes: dict = {}
    wanted = [s for s in FIGURES if umap or "umap" not in s]
    if make_missing and any(not (fig_dir / f"{s}.png").exists() for s in wanted):
        notes = {k: v for k, v in make_figures(zoo, fig_dir, umap=umap,
                                               progress=progress).items() if isinstance(v, str)}
    figures: dict = {}
    for stem, caption in FIGURES.items():
        png = fig_dir / f"{stem}.png"
        if png.exists():
            figures[caption] = png.read_bytes()
        elif stem in notes:
            figures[caption] = notes[stem]
        else:
            figures[caption] = "not drawn (run `python -m experiments.figures --run DIR`)."
    tables, note = load_tables(run_dir, zoo)
    page = render_report(zoo, tables, note, figures)
    path = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
