"""Figures end to end, as a user runs it: ``ocrpipe up --ocr-model`` a bbox model (the local
engine stands in for it), ``submit`` the figures sample (a chart and a photo), ``get`` it,
and open the folder: every figure of the Markdown is a file in it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from tests.test_cli_up import ocrpipe_up

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "figures.pdf"
BBOX_MODEL = "lightonai/LightOnOCR-2-1B-bbox"


@pytest.mark.e2e
def test_up_with_a_bbox_model_turns_the_samples_figures_into_files(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "figures.pdf")
    with ocrpipe_up(tmp_path, "--ocr-model", BBOX_MODEL) as up:
        for command in (
            ["submit", "--local", "figures.pdf", "--wait", "--timeout", "240"],
            ["get", "--local", "figures.pdf", "-o", "out", "--pages", "--json"],
            ["get", "--local", "figures.pdf", "-o", "plain", "--no-figures"],
        ):
            done = up.run(*command)
            assert done.returncode == 0, done.stdout + done.stderr
    assert f"OCR model: {BBOX_MODEL} (figure boxes" in up.output

    out = tmp_path / "out"
    document = (out / "figures.md").read_text(encoding="utf-8")
    print(document)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", document)
    assert links == ["figures/pages/00001.figure-1.png", "figures/pages/00002.figure-1.png"]
    for link in links:
        with Image.open(out / unquote(link)) as figure:
            # The chart and the photo are 380 x 260 pt on an A4 page rendered at 1540 px.
            assert 600 < figure.width < 760 and 420 < figure.height < 520, figure.size
    assert "Figure 1: Revenue by quarter" in document
    assert "The lake at the new site" in document
    assert not re.search(r"\)\s*\d+,\d+,\d+,\d+", document)  # no box left in the prose
    index = json.loads((out / "figures.json").read_text(encoding="utf-8"))
    assert [(f["page"], f["figure"]) for f in index["figures"]] == [(1, 1), (2, 1)]
    for page in (out / "figures" / "pages").glob("*.md"):
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / unquote(link)).is_file()
    assert not list((tmp_path / "plain").rglob("*.png"))
    assert "](pages/00001.figure-1.png)" in (tmp_path / "plain" / "figures.md").read_text()
