"""The HTML report: one page with config, curves, every table and every figure, no broken images."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from experiments.report import main as report_main
from wsjax import plots
from wsjax.report import build_report
from wsjax.store import atomic_write_json
from wsjax.zoo import ZooConfig, run_zoo

TABLES = {
    "ours_vs_paper": [
        {"space": "weight space", "purity": 0.987654, "paper purity": 1.0},
        {"space": "SVD 5", "purity": 0.5, "paper purity": 0.465},
    ],
    "overall": [{"space": "weight space", "overall purity": 0.991234}],
}


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.alts, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))
            self.alts.append(dict(attrs).get("alt", ""))
        if tag == "table":
            self.tables += 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("report") / "ffnn"
    run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=6, epochs=9), out, dataset=digits,
            progress=False, log=lambda *_: None)
    return out


def parse(path: Path) -> tuple[str, _Images]:
    text = path.read_text(encoding="utf-8")
    p = _Images()
    p.feed(text)
    return text, p


def check_images(srcs: list[str], base: Path):
    for src in srcs:
        if src.startswith("data:image/png;base64,"):
            img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
            assert img.std() > 0.02
        else:
            assert not src.startswith("data:") and (base / src).is_file(), src


def test_report_embeds_every_figure_and_table(run_dir):
    atomic_write_json(run_dir / "tables.json", TABLES)
    path = build_report(run_dir, umap=False, progress=False)
    assert path == run_dir / "report.html"
    text, p = parse(path)
    check_images(p.srcs, path.parent)
    drawn = [s for s in plots.FIGURES if "umap" not in s]
    assert len(p.srcs) == len(drawn) + 1  # + the training curves
    assert set(p.alts) == {plots.FIGURES[s] for s in drawn} | {"training curves"}
    for table in TABLES:
        assert f"<h3>{table}</h3>" in text
    assert "0.988" in text and "0.465" in text and "0.991" in text and "class=paper" in text
    assert p.tables == 1 + len(TABLES)  # config + the two tables
    assert '"arch"' in text or "config.arch" in text


def test_report_without_tables_says_how_to_make_them(run_dir, tmp_path):
    (run_dir / "tables.json").unlink(missing_ok=True)
    out = tmp_path / "page.html"
    try:
        import wsjax.analysis.tables  # noqa: F401
        has_tables = True
    except ImportError:
        has_tables = False
    build_report(run_dir, out, umap=False, progress=False)
    text, p = parse(out)
    check_images(p.srcs, out.parent)
    assert has_tables or "experiments.tables" in text


def test_report_cli_prints_path_and_rejects_a_missing_run(run_dir, tmp_path, capsys):
    atomic_write_json(run_dir / "tables.json", TABLES)
    assert report_main(["--run", str(run_dir), "--no-umap", "--no-progress",
                        "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html")
    from wsjax.cli import run_cli

    assert run_cli(report_main, ["--run", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_tables_json_is_valid_json(run_dir):
    atomic_write_json(run_dir / "tables.json", TABLES)
    assert json.loads((run_dir / "tables.json").read_text()) == TABLES
