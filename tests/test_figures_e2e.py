"""Figures end to end, as a user runs it: ``ocrpipe up --ocr-model`` a bbox model (the local
engine stands in for it), ``submit`` the figures sample (a chart and a photo), ``get`` it,
and open the folder: every figure of the Markdown is a file in it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from ocrpipe.local.stack import free_ports
from tests.test_cli_up import OCRPIPE, ctrl_c_as_in_a_terminal

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "figures.pdf"
BBOX_MODEL = "lightonai/LightOnOCR-2-1B-bbox"


@pytest.mark.e2e
def test_up_with_a_bbox_model_turns_the_samples_figures_into_files(tmp_path: Path) -> None:
    ports = free_ports()
    shutil.copy(EXAMPLE, tmp_path / "figures.pdf")
    args = [f"--{name}-port={port}" for name, port in vars(ports).items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCRPIPE_")}
    up = subprocess.Popen([OCRPIPE, "up", "--ocr-model", BBOX_MODEL, *args], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=ctrl_c_as_in_a_terminal)  # fmt: skip

    def ocrpipe(*command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([OCRPIPE, *command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    try:
        env_file = tmp_path / ".ocrpipe" / "local.env"
        deadline = time.monotonic() + 180
        while not env_file.exists():
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, "ocrpipe up did not come up"
            time.sleep(0.3)
        ocrpipe("submit", "--local", "figures.pdf", "--wait", "--timeout", "240")
        ocrpipe("get", "--local", "figures.pdf", "-o", "out", "--pages", "--json")
        ocrpipe("get", "--local", "figures.pdf", "-o", "plain", "--no-figures")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            output, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.terminate()
            up.communicate(timeout=60)
            raise
    assert f"OCR model: {BBOX_MODEL} (figure boxes" in output

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
