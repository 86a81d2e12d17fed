"""The OCR models ocrpipe knows, as data: one entry each in ``models.json`` beside this module.

An entry is keyed by the name vLLM serves the model under (its Hugging Face id, which the
worker sends as ``model``) and says:

* ``revision``: the commit of the model repository the GPU image pins (None where none was
  checked: the image's build then needs one, see ``gpu_image/check-model.sh``);
* ``max_model_len``: the context vLLM serves it with, prompt and reply tokens together;
* ``figure_boxes``: whether it writes ``![image](image_N.png)x1,y1,x2,y2`` where a page has
  a figure (LightOnOCR's bbox variants), so that the worker crops the figures
  (:mod:`ocrpipe.worker.figure_refs`);
* ``render_longest_side``: the longest side, in pixels, of the page images it was trained on.

Who reads it: :class:`ocrpipe.settings.Settings` takes the defaults of the settings that
depend on the model from the entry of ``ocr_model`` (:data:`SETTINGS_FROM_MODEL`), so the
splitter, the worker and the CLI agree; the local engine serves an entry's context length and
stands in for its figure boxes; the GPU image's build derives its serve settings from it; and
terraform refuses a ``gpu_model`` that has no entry. Adding a model is one entry and a line
in ``tests/test_models.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

MODELS_FILE = Path(__file__).with_name("models.json")
_REVISION = re.compile(r"[0-9a-f]{40}")

# Setting -> the entry's field that gives its default (an explicit setting still wins).
SETTINGS_FROM_MODEL: Mapping[str, str] = {
    "ocr_max_model_len": "max_model_len",
    "ocr_figure_boxes": "figure_boxes",
    "render_longest_side": "render_longest_side",
}


@dataclass(frozen=True)
class ModelSpec:
    served_name: str
    revision: str | None
    max_model_len: int
    figure_boxes: bool
    render_longest_side: int


@dataclass(frozen=True)
class ModelTable:
    default: str
    models: Mapping[str, ModelSpec]

    def get(self, served_name: str) -> ModelSpec | None:
        return self.models.get(served_name)

    @property
    def default_model(self) -> ModelSpec:
        return self.models[self.default]


@cache
def load_models() -> ModelTable:
    return parse_models(json.loads(MODELS_FILE.read_text(encoding="utf-8")))


def parse_models(raw: Mapping[str, Any]) -> ModelTable:
    """Check and read the table; a mistake in it fails every entry point at import."""
    models: dict[str, ModelSpec] = {}
    for name, entry in raw["models"].items():
        unknown = set(entry) - {"revision", "max_model_len", "figure_boxes", "render_longest_side"}
        if unknown:
            raise ValueError(f"models.json: {name} has unknown fields {sorted(unknown)}")
        revision = entry["revision"]
        if revision is not None and not _REVISION.fullmatch(revision):
            raise ValueError(f"models.json: {name}'s revision {revision!r} is not a 40-hex commit")
        spec = ModelSpec(
            served_name=name,
            revision=revision,
            max_model_len=entry["max_model_len"],
            figure_boxes=entry["figure_boxes"],
            render_longest_side=entry["render_longest_side"],
        )
        for field in ("max_model_len", "render_longest_side"):
            value = getattr(spec, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"models.json: {name}'s {field} must be a positive integer")
        if not isinstance(spec.figure_boxes, bool):
            raise ValueError(f"models.json: {name}'s figure_boxes must be true or false")
        models[name] = spec
    default = raw["default"]
    if default not in models:
        raise ValueError(f"models.json: the default {default!r} has no entry")
    return ModelTable(default, models)
