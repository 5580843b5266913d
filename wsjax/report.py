"""One self-contained HTML page per zoo, read like a paper's results section.

The page opens with a summary (zoo, data, test accuracy, where and how fast it was trained) and
the paper's Table 2 or 3 with our value beside the paper's; configuration and provenance follow
in a compact table, then the per-cluster values, the training curves and Figures 3-9 with
captions that say what to look for. Figures are embedded as base64 PNG, so the page is a single
file that can be mailed, archived or printed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from wsjax.store import Zoo, atomic_write_bytes, load_zoo, read_json

__all__ = ["build_report", "render_report", "load_tables", "RESULT_COLUMNS"]

# The results table's columns: the paper's three (in its order), then ours alone.
RESULT_COLUMNS = ("space", "cluster purity", "# ordered initial epochs", "% ordered epochs",
                  "overall purity", "notes")
_ROW_KEYS = (("mean_purity", "paper_purity"), ("ordered_initial", "paper_ordered_initial"),
             ("ordered_fraction", "paper_ordered_fraction"))

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1120px; margin: 1.2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.45em; margin: 0 0 0.3em; }
h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: 0.15em;
     margin: 1.4em 0 0.5em; }
h2.results { margin-top: 0.6em; }
p { margin: 0.4em 0; } .summary { margin: 0; padding-left: 1.2em; }
.summary li { margin: 0.1em 0; }
table { border-collapse: collapse; margin: 0.4em 0 0.6em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.55em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.results td { white-space: nowrap; } table.results td.note { white-space: normal; }
td.note, th.note { text-align: left; color: #555; font-size: 0.92em; }
.paper { color: #777; } .skipped { color: #999; }
table.config td, table.config th { text-align: left; }
table.config td:nth-child(odd) { color: #555; }
.small { font-size: 0.88em; color: #444; }
.figs { display: flex; flex-wrap: wrap; gap: 0 1.5%; }
figure { margin: 0.8em 0; flex: 1 1 100%; break-inside: avoid; }
figure.half { flex: 1 1 48%; max-width: 49%; }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #444; }
figcaption .here { color: #124d8a; }
details { margin: 0.4em 0 1em; } summary { cursor: pointer; color: #124d8a; }
details table { display: inline-table; vertical-align: top; margin-right: 1em; font-size: 0.8em; }
.note { color: #8a5a00; } code { background: #f5f5f5; padding: 0 0.2em; }
@media print { body { max-width: none; margin: 0; } figure.half { max-width: 49%; }
               summary { display: none; } }
"""
# Printing opens the folded per-cluster numbers, so the printed page holds everything.
_SCRIPT = ("window.addEventListener('beforeprint', function () { "
           "document.querySelectorAll('details').forEach(function (d) { d.open = true; }); });")


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def load_tables(run_dir: Path, zoo: Zoo | None = None) -> tuple[dict, str]:
    """The run's tables (wsjax.analysis.tables.zoo_tables_detail's dict): tables.json when it
    holds them, else computed.

    Returns:
        (tables, a note saying where they came from).
    """
    from wsjax.analysis.tables import zoo_tables_detail

    path = Path(run_dir) / "tables.json"
    if path.exists():
        stored = read_json(path, "recompute it with `python -m experiments.tables --run DIR`")
        if isinstance(stored, dict) and isinstance(stored.get("rows"), list):
            return stored, f"from {path.name}"
        note = (f"{path.name} is not in the format `python -m experiments.tables` writes; "
                "computed for this report")
    else:
        note = ("computed for this report (`python -m experiments.tables --run DIR` saves "
                "them)")
    zoo = zoo if zoo is not None else load_zoo(run_dir)
    return zoo_tables_detail(zoo), note


def _num(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _table(head: list[str], rows: list[list[str]], cls: str = "", caption: str = "") -> str:
    """An HTML table from already-escaped cell strings."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f"<table{f' class={cls}' if cls else ''}>{cap}<tr>{th}</tr>{body}</table>"


def _space_key(row: dict, num_params: int):
    """"full" for the weight space's row, else its SVD dimension."""
    return "full" if row.get("dims") == num_params else row.get("dims")


def _mixed_clusters(per_cluster: dict | None) -> tuple[int, int] | None:
    """(clusters holding more than one model, clusters) of one space, or None if unknown."""
    if not per_cluster or "purity" not in per_cluster:
        return None
    purity = np.asarray(per_cluster["purity"], float)
    return int((purity < 1.0).sum()), len(purity)


def _results_rows(tables: dict, num_params: int) -> list[dict]:
    """The rows of the results table in the paper's order: full space, then SVD dimensions
    from large to small; spaces of the paper's table that were skipped get a row that says why.
    """
    from wsjax.analysis.tables import PAPER_TABLES

    rows = [{**r, "key": _space_key(r, num_params), "note": ""} for r in tables["rows"]]
    have = {r["key"] for r in rows}
    paper = PAPER_TABLES.get(tables.get("arch"), {}).get("rows", {})
    n_snapshots = tables.get("n_snapshots", 0)
    for space, vals in paper.items():
        if space in have:
            continue
        why = ("not computed" if space == "full"
               else f"not below the {num_params} weights" if space >= num_params
               else f"more dimensions than the {n_snapshots} snapshots"
               if space > n_snapshots else "not computed")
        rows.append({"space": f"SVD {space}", "key": space, "dims": space, "skipped": True,
                     "mean_purity": None, "ordered_initial": None, "ordered_fraction": None,
                     "overall_purity": None, "paper_purity": vals[0],
                     "paper_ordered_initial": vals[1], "paper_ordered_fraction": vals[2],
                     "note": f"skipped: {why}"})
    for r in rows:
        mixed = _mixed_clusters(tables.get("per_cluster", {}).get(r["space"]))
        if mixed and mixed[0]:
            r["note"] = f"{mixed[0]} of {mixed[1]} clusters hold more than one model"
    return sorted(rows, key=lambda r: (r["key"] != "full", -(r["dims"] or 0)))


def _results_table(tables: dict, num_params: int) -> str:
    """The paper's Table 2/3 layout: one row per space, each cell "ours (paper)"."""
    body = []
    for r in _results_rows(tables, num_params):
        cells = [html.escape(r["space"])]
        for ours, paper in _ROW_KEYS:
            cells.append(f"{_num(r[ours])} <span class=paper>({_num(r[paper])})</span>")
        cells += [_num(r["overall_purity"]), html.escape(r["note"])]
        body.append(cells)
    head = list(RESULT_COLUMNS)
    th = "".join(f"<th{' class=note' if h == 'notes' else ''}>{html.escape(h)}</th>"
                 for h in head)
    trs = "".join(
        f"<tr{' class=skipped' if r[1].startswith('–') else ''}>"
        + "".join(f"<td{' class=note' if i == len(r) - 1 else ''}>{c}</td>"
                  for i, c in enumerate(r)) + "</tr>" for r in body)
    return f"<table class=results id=results><tr>{th}</tr>{trs}</table>"


def _lowest_pure(rows: list[dict], ours: bool) -> str | None:
    """The smallest space down to which every space has purity 1 (ours or the paper's)."""
    key = "mean_purity" if ours else "paper_purity"
    last = None
    for r in rows:
        v = r.get(key)
        if v is None:
            continue
        if v < 1.0:
            break
        last = r["space"]
    return last


def _results_text(tables: dict, zoo: Zoo, num_params: int, source: str) -> str:
    """The sentences under the results table: what was clustered and how it reads against
    the paper's shape."""
    rows = [r for r in _results_rows(tables, num_params) if not r.get("skipped")]
    e0, e1 = tables.get("epochs", [1, zoo.num_epochs])
    n, snaps = tables.get("n_models", "?"), tables.get("n_snapshots", "?")
    parts = [f"Snapshots after epochs {e0}–{e1} of {n} models ({snaps} points), clustered by "
             f"single linkage in each space and cut into {n} clusters; each cell is ours "
             "(the paper's). Cluster purity is the mean over clusters of the dominant model's "
             "share, overall purity the share of all snapshots that sit with their own model."]
    ours, paper = _lowest_pure(rows, True), _lowest_pure(rows, False)
    if paper:
        parts.append(f"Every cluster is pure down to {ours or 'no space'} here, down to "
                     f"{paper} in the paper.")
    full = next((r for r in rows if r["key"] == "full"), None)
    if full and full.get("paper_ordered_initial") is not None:
        parts.append(f"In the full weight space {_num(full['ordered_initial'])} of {e1 - e0 + 1} "
                     f"epochs come out in order from the start, against "
                     f"{_num(full['paper_ordered_initial'])} of the paper's 50.")
    notes = [n for n in tables.get("notes", []) if not n.startswith("skipped SVD")]
    parts += [f"Note: {html.escape(n)}." for n in notes]
    parts.append(f"Tables {html.escape(source)}.")
    return "<p class=small>" + " ".join(parts) + "</p>"


def _provenance_text(zoo: Zoo) -> str:
    prov = zoo.config.get("provenance")
    if not prov:
        return "not recorded (trained by a wsjax that did not record it)"
    finished = str(prov.get("finished", "")).replace("T", " ")[:16]
    return (f"{html.escape(str(prov.get('device')))} ({prov.get('cpu_count')} CPU cores), "
            f"JAX {html.escape(str(prov.get('jax')))}: {prov.get('train_seconds', 0):,.1f} s, "
            f"{prov.get('model_steps_per_s', 0):,.0f} model-steps/s"
            + (f", finished {html.escape(finished)} UTC" if finished else ""))


def _seeds_text(seeds: list) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]} ({len(seeds)})"
    return json.dumps(seeds[:8])[:-1] + (", …]" if len(seeds) > 8 else "]")


def _config_table(zoo: Zoo) -> str:
    """Configuration and provenance as (setting, value) pairs, two pairs per row."""
    cfg = zoo.config
    pairs = [(k, v) for k, v in (cfg.get("config") or {}).items() if k not in ("seeds",)]
    pairs += [(f"data {k}", v) for k, v in (cfg.get("data") or {}).items()]
    pairs += [("seeds", _seeds_text(list(cfg.get("seeds", [])))),
              ("weights", cfg.get("num_params")), ("flatten order", cfg.get("flatten_order"))]
    if "sharded" in cfg:
        pairs.append(("processes", cfg["sharded"].get("num_processes")))
    prov = cfg.get("provenance") or {}
    order = ["device", "platform", "cpu_count", "jax", "wsjax", "train_seconds",
             "model_steps_per_s", "finished"]
    pairs += [(k, prov[k]) for k in sorted(prov, key=lambda k: (k not in order,
                                                                 order.index(k) if k in order
                                                                 else 0, k))]
    known = {"config", "data", "seeds", "num_params", "flatten_order", "sharded", "provenance",
             "arch", "epochs"}
    pairs += [(k, json.dumps(v, default=str)[:80]) for k, v in cfg.items() if k not in known]
    cells = [(html.escape(str(k).replace("_", " ")),
              html.escape(v if isinstance(v, str) else json.dumps(v, default=str)))
             for k, v in pairs]
    if len(cells) % 2:
        cells.append(("", ""))
    half = len(cells) // 2
    rows = [[*cells[i], *cells[half + i]] for i in range(half)]
    return _table(["setting", "value", "setting", "value"], rows, cls="config")


def _per_cluster_html(tables: dict, num_params: int) -> str:
    """Small plots of the per-cluster values, and the rounded numbers folded away."""
    from wsjax.plots import plot_cluster_values

    # In the table's order (the JSON file keeps its keys sorted by name).
    per = {r["space"]: tables["per_cluster"][r["space"]] for r in tables["rows"]
           if r["space"] in (tables.get("per_cluster") or {})}
    if not per:
        return "<p class=note>No per-cluster values in the tables.</p>"
    rows = {r["space"]: r for r in tables["rows"]}
    paper = {s: tuple(rows[s].get(p) for _, p in _ROW_KEYS) for s in per if s in rows}
    labels = {s: ("full" if _space_key(rows.get(s, {}), num_params) == "full"
                  else s.replace("SVD ", "")) for s in per}
    fig, _ = plot_cluster_values({labels[s]: v for s, v in per.items()},
                                 {labels[s]: v for s, v in paper.items()})
    img = (f"<figure><img alt='per-cluster purity and epoch order in each space' "
           f"src='{_png_data_uri(_fig_png(fig))}'><figcaption>One dot per cluster in each space "
           "(full weight space, then SVD dimensions), the bar at our mean (the table's value), "
           "an open diamond at the paper's. Look for dots below 1 in purity (clusters that mix "
           "models) and for how far the epoch order spreads between clusters: the paper gives "
           "only its means.</figcaption></figure>")
    blocks = []
    for space, v in per.items():
        body = [[str(i), html.escape(str(v["dominant"][i])), str(v["size"][i]),
                 _num(v["purity"][i]), str(int(v["ordered_initial"][i])),
                 _num(v["ordered_fraction"][i])] for i in range(len(v["purity"]))]
        blocks.append(_table(["cluster", "model", "size", "purity", "ordered initial",
                              "ordered fraction"], body, caption=html.escape(space)))
    return (img + "<details><summary>Per-cluster values (rounded to 3 decimals), one table per "
            "space</summary>" + "".join(blocks) + "</details>")


def _here(stem: str, tables: dict | None, num_params: int) -> str:
    """A measured sentence that sets a dendrogram beside the paper's value for its space."""
    from wsjax.plots import FIGURE_SPACES

    if tables is None or stem not in FIGURE_SPACES:
        return ""
    row = next((r for r in tables["rows"]
                if _space_key(r, num_params) == FIGURE_SPACES[stem]), None)
    if row is None:
        return ""
    if stem == "fig9_dendrogram_detail":
        e0, e1 = tables.get("epochs", [1, 0])
        return (f" Here: {_num(row['ordered_initial'])} of {e1 - e0 + 1} epochs in order from "
                f"the start on average (paper {_num(row['paper_ordered_initial'])} of 50).")
    mixed = _mixed_clusters(tables.get("per_cluster", {}).get(row["space"]))
    text = (f" Here: cluster purity {_num(row['mean_purity'])} in this space "
            f"(paper {_num(row['paper_purity'])})")
    if mixed:
        text += f"; {mixed[0]} of {mixed[1]} clusters hold more than one model"
    return text + "."


def render_report(zoo: Zoo, tables: dict | None = None, tables_note: str = "",
                  figures: dict | None = None) -> str:
    """The report page as an HTML string.

    Args:
        zoo: the zoo.
        tables: wsjax.analysis.tables.zoo_tables_detail's dict, or None (a note says why).
        tables_note: where the tables came from.
        figures: {file stem of wsjax.plots.FIGURES: PNG bytes or a note string}.
    """
    from wsjax.analysis.tables import PAPER_TABLES
    from wsjax.plots import FIGURES, plot_training_curves

    s, e1, p = zoo.snapshots.shape
    healthy = zoo.healthy()
    acc = zoo.test_accuracy[healthy]
    final = acc[:, -1] if len(acc) else np.array([np.nan])
    data = zoo.config.get("data", {})
    arch = zoo.arch
    table_name = PAPER_TABLES.get(arch, {}).get("table")
    title = f"{arch.upper()} zoo on {data.get('name', '?')}: the weight-space study"
    diverged = s - int(healthy.sum())
    summary = [
        f"<b>Zoo</b>: {s} {arch.upper()} models × {e1 - 1} epochs, {p:,} weights each"
        + (f" ({diverged} diverged, left out)" if diverged else "") + ".",
        f"<b>Data</b>: {html.escape(str(data.get('name', '?')))} from "
        f"{html.escape(str(data.get('source', '?')))}, {_count(data.get('n_train'))} training / "
        f"{_count(data.get('n_test'))} test images (the paper: MNIST, 60,000 / 10,000).",
        f"<b>Test accuracy</b> after epoch {e1 - 1}: median {np.median(final):.3f} "
        f"(range {np.min(final):.3f}–{np.max(final):.3f}).",
        f"<b>Trained</b> on {_provenance_text(zoo)}.",
    ]
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script>{_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul class=summary>" + "".join(f"<li>{x}</li>" for x in summary) + "</ul>",
    ]
    heading = (f"{table_name} ({arch.upper()} zoo)" if table_name
               else f"Results ({arch.upper()} zoo; the paper has no table for it)")
    parts.append(f"<h2 class=results>{heading}: cluster purity and epoch order, "
                 "ours <span class=paper>(paper)</span></h2>")
    if tables is None:
        parts.append(f"<p class=note>{html.escape(tables_note)}</p>")
    else:
        parts.append(_results_table(tables, p))
        parts.append(_results_text(tables, zoo, p, tables_note))
    parts += ["<h2>Configuration and provenance</h2>", _config_table(zoo)]
    if tables is not None:
        parts += ["<h2>Per-cluster values</h2>", _per_cluster_html(tables, p)]
    curve, _ = plot_training_curves(acc, f"Test accuracy per epoch, {int(healthy.sum())} seeds")
    parts += [
        "<h2>Training and figures</h2><div class=figs>",
        f"<figure class=half><img alt='test accuracy per epoch' "
        f"src='{_png_data_uri(_fig_png(curve))}'><figcaption>Test accuracy per epoch: median "
        "over seeds, 10-90% and min-max bands. Look for every seed learning; the paper calls "
        "its zoos' accuracy competitive after 50 epochs on MNIST.</figcaption></figure>"]
    for stem, content in (figures or {}).items():
        caption = FIGURES[stem]
        half = " class=half" if stem in ("fig3_weight_stats", "fig4_umap_full",
                                         "fig5_umap_svd50", "fig9_dendrogram_detail") else ""
        if isinstance(content, bytes):
            parts.append(
                f"<figure{half}><img alt='{html.escape(caption.title, quote=True)}' "
                f"src='{_png_data_uri(content)}'><figcaption><b>{html.escape(caption.title)}"
                f"</b> {html.escape(caption.look_for)}<span class=here>"
                f"{_here(stem, tables, p)}</span></figcaption></figure>")
        else:
            parts.append(f"<p class=note>{html.escape(caption.title)} "
                         f"{html.escape(str(content))}</p>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _drawn_figures(fig_dir: Path, stems: list[str]) -> dict | None:
    """{stem: why it was skipped} when fig_dir holds (or skipped, with a reason) every wanted
    figure, drawn by this version of the plots; None when they must be drawn."""
    from wsjax.plots import FIGURES_VERSION

    index = fig_dir / "figures.json"
    if not index.exists():
        return None
    drawn = read_json(index)
    skipped = drawn.get("skipped", {})
    if drawn.get("version") != FIGURES_VERSION or not all(
            s in skipped or (fig_dir / f"{s}.png").exists() for s in stems):
        return None
    return skipped


def build_report(run_dir: str | Path, out: str | Path | None = None, make_missing: bool = True,
                 umap: bool = True, progress: bool = True) -> Path:
    """Writes RUN/report.html (or `out`) for a completed run directory and returns its path.

    Figures are read from RUN/figures/ and drawn when missing or drawn by an older wsjax
    (make_missing); the tables come from RUN/tables.json or are computed.
    """
    from wsjax.plots import FIGURES, make_figures

    run_dir = Path(run_dir)
    zoo = load_zoo(run_dir)
    fig_dir = run_dir / "figures"
    wanted = [s for s in FIGURES if umap or "umap" not in s]
    notes = _drawn_figures(fig_dir, wanted)
    if notes is None and make_missing:
        notes = {k: v for k, v in make_figures(zoo, fig_dir, umap=umap,
                                               progress=progress).items() if isinstance(v, str)}
    figures: dict = {}
    for stem in FIGURES:
        png = fig_dir / f"{stem}.png"
        if stem in (notes or {}):
            figures[stem] = notes[stem]
        elif png.exists():
            figures[stem] = png.read_bytes()
        else:
            figures[stem] = "not drawn (run `python -m experiments.figures --run DIR`)."
    tables, note = load_tables(run_dir, zoo)
    page = render_report(zoo, tables, note, figures)
    path = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
