"""The HTML leaderboard: one self-contained page, safe with hostile labels, checked in Chromium.

The store holds runs whose objective and teacher labels are HTML and script; the page
must show them as text.  The browser test opens the page in headless Chromium
(``leaderboards.browser``, DevTools over a pipe) and checks what a reader gets: every
table with its rows, every figure decoded, no error, no request leaving the page.  It
skips where Chromium is absent, except under CI, which installs it (``.ci/chromium``).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chromium_or_skip, tmpfs_folder
from mlflow.tracking import MlflowClient
from PIL import Image
from test_leaderboards import _common, _log

import leaderboards as lb
from harness.cli import cli
from leaderboards.browser import WIDTH, inspect_page

HOSTILE_OBJECTIVE = "<script>alert('o')</script>"
HOSTILE_TEACHER = '"><img src=x onerror=alert(1)>'
TEACHERS = {HOSTILE_TEACHER: 900_000, "small & <b>bold</b>": 300_000}
OBJECTIVES = ["none", HOSTILE_OBJECTIVE, "place"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tmpfs_folder("kdbench-html-", tmp_path_factory.mktemp("html")) as root:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        eid = client.create_experiment("hostile")
        rng = np.random.default_rng(0)
        for teacher, size in TEACHERS.items():
            _log(
                client,
                eid,
                {**_common("g<1>"), "kdbench.kind": "teacher"},
                {"teacher": teacher, "teacher_params": size},
                {"fid": 4.0, "class_acc": 0.95},
                "finished",
            )
            for objective in OBJECTIVES:
                for seed in (0, 1):
                    history = None
                    if objective == "place":
                        steps = np.arange(10)
                        history = {
                            "train/place/w": 1 - np.exp(-steps / 3),
                            "train/place/coarse": np.exp(-steps / 4) + 1e-3,
                            "train/place/fine": np.exp(-steps / 5) + 1e-3,
                        }
                    image = np.zeros((16, 16, 3), np.uint8) + np.uint8(
                        40 * (1 + OBJECTIVES.index(objective))
                    )
                    _log(
                        client,
                        eid,
                        {
                            **_common("g<1>"),
                            "kdbench.kind": "cell",
                            "kdbench.cell_id": f"{objective}-{teacher}-{seed}",
                        },
                        {
                            "objective": objective,
                            "teacher": teacher,
                            "teacher_params": size,
                            "student": "s",
                            "student_params": 50_000,
                            "seed": seed,
                            "dataset": "digits",
                            "image_size": 8,
                        },
                        {
                            "fid": 30 + 10 * OBJECTIVES.index(objective) + rng.normal(0, 1),
                            "class_acc": 0.5,
                            "iter_per_s": 10.0,
                            "peak_mem_mb": 100.0,
                        },
                        "finished",
                        history,
                        image,
                    )
        yield {"uri": uri, "root": root}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_page_is_self_contained_and_shows_hostile_labels_as_text(store):
    page = lb.report(store["uri"], experiments=["hostile"], fmt="html")
    parsed = _Page()
    parsed.feed(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags
    assert not [key for _, attrs in parsed.tags for key in attrs if key.startswith("on")]
    images = [a for t, a in parsed.tags if t == "img"]
    alts = [a["alt"] for a in images]  # every figure the report drew, whatever their number
    assert {"capacity_gap_fid.png", "curves.png", "samples.png"} <= set(alts)
    assert len(alts) == len(set(alts))
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    # No attribute anywhere points outside the page.
    for _, attrs in parsed.tags:
        for key in ("src", "href"):
            assert not attrs.get(key) or attrs[key].startswith("data:"), attrs
    csp = [a for t, a in parsed.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in csp[0]["content"]
    text = "".join(parsed.text)
    assert HOSTILE_OBJECTIVE in text and HOSTILE_TEACHER in text  # shown, as text
    assert "&lt;script&gt;" in page and "<script>" not in page


def test_page_renders_in_chromium_with_tables_figures_and_no_errors(store, tmp_path):
    chromium_or_skip()
    page = tmp_path / "board.html"
    html = lb.report(store["uri"], experiments=["hostile"], fmt="html")
    page.write_text(html, "utf-8")
    shot = tmp_path / "board.png"
    seen = inspect_page(page, screenshot=shot)
    assert seen.title == "kdbench leaderboard"
    assert seen.errors == [] and seen.requests == []
    # metadata, capacity gap (fid), class accuracy, overhead, teachers, ...: each with rows.
    assert len(seen.tables) == html.count("<table") >= 5
    assert all(rows >= 2 for rows in seen.tables)
    assert len(seen.images) == html.count("data:image/png;base64,") >= 3
    assert seen.broken_images == []
    assert all(im["width"] > 300 for im in seen.images)
    assert HOSTILE_OBJECTIVE in seen.text and HOSTILE_TEACHER in seen.text
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (WIDTH, seen.height)
        assert len(set(im.convert("L").getdata())) > 10  # drawn, not blank


def test_browser_reports_a_broken_page(tmp_path):
    chromium_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body><table><tr><td>1</td></tr>"
        '</table><img alt="gone" src="data:image/png;base64,AAAA">'
        "<script>throw new Error('boom')</script></body></html>"
    )
    seen = inspect_page(bad)
    assert seen.tables == [1] and seen.broken_images == ["gone"]
    assert any("boom" in e for e in seen.errors)


def hostile_leaderboard(store, *options: str):
    """``kdbench leaderboard`` of the hostile experiment, in process."""
    args = ["leaderboard", "--tracking-uri", store["uri"], "--experiment", "hostile"]
    return CliRunner().invoke(cli, [*args, *options])


def test_leaderboard_command_writes_page_and_screenshot(store, tmp_path):
    chromium_or_skip()
    out, shot = tmp_path / "page.html", tmp_path / "shot.png"
    result = hostile_leaderboard(
        store, "--format", "html", "-o", str(out), "--screenshot", str(shot)
    )
    assert result.exit_code == 0, result.output
    found = re.search(r"wrote .*shot\.png \((\d+) tables, (\d+) figures\)", result.output)
    assert found and int(found.group(1)) >= 5
    assert out.read_text().count("data:image/png;base64,") == int(found.group(2)) >= 3
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_screenshot_without_chromium_is_one_line_exit_2(store, tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CHROMIUM", str(tmp_path / "no-such-browser"))
    result = hostile_leaderboard(store, "--screenshot", str(tmp_path / "shot.png"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("kdbench: error: no Chromium found")


def test_headline_is_the_best_mean_per_teacher(store):
    from leaderboards.publish import headline

    df = lb.load_runs(store["uri"], ["hostile"])
    cells = df[df["kind"] == "cell"]
    means = cells.groupby(["teacher", "objective"])["fid"].mean()
    best = headline(df)
    # Smallest teacher first, as in the tables.
    assert [b["teacher"] for b in best] == ["small & <b>bold</b>", HOSTILE_TEACHER]
    for b in best:
        expected = means[b["teacher"]]
        assert b["objective"] == expected.idxmin() and b["n"] == 2
        assert b["mean"] == pytest.approx(expected.min())
