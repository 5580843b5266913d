"""The HTML report: it opens on the paper's table, embeds every figure, and renders in a browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from experiments.report import main as report_main
from experiments.tables import main as tables_main
from wsjax import plots
from wsjax.report import build_report
from wsjax.store import atomic_write_json
from wsjax.zoo import ZooConfig, run_zoo

# The paper's Table 3 (FFNN), as printed there: space -> (purity, ordered initial, fraction).
PAPER_TABLE_3 = {"2160 (weight space)": ("1.000", "4.512", "0.357"),
                 "SVD 500": ("1.000", "4.632", "0.339"), "SVD 100": ("1.000", "4.532", "0.325"),
                 "SVD 50": ("1.000", "4.212", "0.303"), "SVD 25": ("1.000", "3.684", "0.273"),
                 "SVD 10": ("1.000", "2.916", "0.227"), "SVD 5": ("0.843", "2.038", "0.177")}
PAPER_COLUMNS = ["space", "cluster purity", "# ordered initial epochs", "% ordered epochs"]
# The flags that keep Chromium from waiting on a network it cannot reach.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


class _Page(HTMLParser):
    """Images, and every table as rows of cell texts, in page order; headings before each."""

    def __init__(self):
        super().__init__()
        self.srcs, self.alts, self.tables, self.headings = [], [], [], []
        self._cell: list[str] | None = None
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
            self.alts.append(a.get("alt", ""))
        elif tag == "table":
            self.tables.append({"rows": [], "after": list(self.headings)})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._in, self._heading = tag, []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag in ("h1", "h2") and self._in == tag:
            self.headings.append("".join(self._heading).strip())
            self._in = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in:
            self._heading.append(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    """A 6-seed FFNN zoo with its tables.json, as `make demo` leaves one (54 snapshots: SVD 500
    and 100 are skipped)."""
    out = tmp_path_factory.mktemp("report") / "ffnn"
    run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=6, epochs=9), out, dataset=digits,
            progress=False, log=lambda *_: None)
    tables_main(["--run", str(out), "--no-progress"])
    return out


@pytest.fixture(scope="module")
def page(run_dir):
    path = build_report(run_dir, umap=False, progress=False)
    text = path.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    return path, text, p


def check_images(srcs: list[str]):
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), "every image is inline"
        img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.std() > 0.02


def test_the_first_table_is_the_papers_table_with_ours_beside_it(run_dir, page):
    path, _, p = page
    assert path == run_dir / "report.html"
    first = p.tables[0]
    assert first["after"] == [first["after"][0], first["after"][1]]  # only h1 and its h2 before
    assert "Table 3" in first["after"][1] and "ours (paper)" in first["after"][1]
    head, *rows = first["rows"]
    assert head[:4] == PAPER_COLUMNS
    assert [r[0] for r in rows] == list(PAPER_TABLE_3)  # one row per space, the paper's order
    stored = {r["space"]: r for r in json.loads((run_dir / "tables.json").read_text())["rows"]}
    for r in rows:
        paper = PAPER_TABLE_3[r[0]]
        if r[0] in ("SVD 500", "SVD 100"):  # more dimensions than the 54 snapshots
            assert r[1:4] == [f"– ({v})" for v in paper] and "skipped" in r[-1]
            continue
        ours = stored[r[0]]
        assert r[1:4] == [f"{ours[k]:.3f} ({v})" for k, v in zip(
            ("mean_purity", "ordered_initial", "ordered_fraction"), paper, strict=True)]
        assert r[4] == f"{ours['overall_purity']:.3f}"


def test_summary_then_config_then_rounded_per_cluster_values(run_dir, page):
    _, text, p = page
    opening = text[:text.index("<table")]
    for fact in ("6 FFNN models × 9 epochs", "digits from sklearn", "Test accuracy", "median",
                 "JAX", "model-steps/s"):
        assert fact in opening
    assert p.tables[1]["rows"][0] == ["setting", "value", "setting", "value"]
    config_cells = [c for row in p.tables[1]["rows"] for c in row]
    assert "0–5 (6)" in config_cells and "train seconds" in config_cells
    per_cluster = [t for t in p.tables[2:] if t["rows"][0][:2] == ["cluster", "model"]]
    assert len(per_cluster) == 5  # the full space and SVD 50, 25, 10, 5
    assert all(len(t["rows"]) == 1 + 6 for t in per_cluster)
    assert re.search(r"<details><summary>Per-cluster values", text)
    cells = [c for t in per_cluster for row in t["rows"][1:] for c in row[3:]]
    assert cells and all(re.fullmatch(r"–|\d+|\d\.\d{3}", c) for c in cells), cells


def test_every_figure_is_inline_with_a_caption_that_says_what_to_look_for(page):
    _, text, p = page
    check_images(p.srcs)
    drawn = [s for s in plots.FIGURES if "umap" not in s]
    assert len(p.srcs) == len(drawn) + 2  # + the per-cluster values and the training curves
    assert {plots.FIGURES[s].title for s in drawn} <= set(p.alts)
    for stem in drawn:
        assert plots.FIGURES[stem].look_for in text.replace("&#x27;", "'")
    assert text.count("Here: cluster purity") == 3  # Figs. 6-8 beside the paper's purity


def test_figures_drawn_by_an_older_version_are_redrawn(run_dir, tmp_path, monkeypatch):
    calls = []

    def fake(zoo, out_dir, umap=True, progress=True):
        calls.append(out_dir)
        atomic_write_json(Path(out_dir) / "figures.json",
                          {"version": plots.FIGURES_VERSION, "skipped": {}})
        return {}

    monkeypatch.setattr(plots, "make_figures", fake)
    index = run_dir / "figures" / "figures.json"
    build_report(run_dir, tmp_path / "a.html", umap=False, progress=False)
    assert calls == []  # current figures are reused
    atomic_write_json(index, {"version": plots.FIGURES_VERSION - 1, "skipped": {}})
    build_report(run_dir, tmp_path / "b.html", umap=False, progress=False)
    assert calls == [run_dir / "figures"]


def test_tables_in_another_format_are_computed_again(run_dir, tmp_path):
    saved = (run_dir / "tables.json").read_bytes()
    atomic_write_json(run_dir / "tables.json", {"ours_vs_paper": []})
    try:
        out = build_report(run_dir, tmp_path / "page.html", umap=False, progress=False)
    finally:
        (run_dir / "tables.json").write_bytes(saved)
    text = out.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    assert p.tables[0]["rows"][0][:4] == PAPER_COLUMNS
    assert "not in the format" in text


def test_report_cli_prints_path_and_rejects_a_missing_run(run_dir, tmp_path, capsys):
    assert report_main(["--run", str(run_dir), "--no-umap", "--no-progress",
                        "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html")
    from wsjax.cli import run_cli

    assert run_cli(report_main, ["--run", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def _browser(tmp_path):
    """A headless Chromium driven by Selenium through the system's chromedriver, or a skip
    (a failure where WSJAX_REQUIRE_BROWSER is set, as CI sets it) saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", driver_path))
               if not found]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        why = (f"no {', '.join(missing)}: the browser test needs Debian's chromium and "
               "chromium-driver (apt-get install chromium chromium-driver)")
        if os.environ.get("WSJAX_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    # A laptop screen: exactly 1280 x 800 CSS pixels of page, whatever the window decorations.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1,
                            "mobile": False})
    return driver


def test_report_in_headless_chromium(page, tmp_path):
    path, _, p = page
    driver = _browser(tmp_path)
    try:
        driver.get(path.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth]);")
        assert len(images) == len(p.srcs)
        assert all(complete and width > 0 for _, complete, width in images), images
        box = driver.execute_script(
            "const t = document.querySelector('table'); const r = t.getBoundingClientRect();"
            "const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);"
            "return {id: t.id, top: r.top, bottom: r.bottom, right: r.right,"
            "        width: innerWidth, height: innerHeight, hit: t.contains(hit)};")
        assert (box["width"], box["height"]) == (1280, 800)
        assert box["id"] == "results" and box["hit"]
        assert box["top"] >= 0 and box["bottom"] <= 800 and box["right"] <= 1280, box
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        driver.quit()
