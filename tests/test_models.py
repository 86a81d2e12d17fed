"""The model table (ocrpipe/models.json): one entry per model, and the settings that follow
from it. Adding a model is one entry there and one line in EXPECTED here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocrpipe.models import MODELS_FILE, SETTINGS_FROM_MODEL, load_models, parse_models
from ocrpipe.settings import Settings

# served name -> (context length, figure boxes, longest side), from the model cards.
EXPECTED = {
    "lightonai/LightOnOCR-2-1B": (8192, False, 1540),
    "lightonai/LightOnOCR-2-1B-bbox": (8192, True, 1540),
    "lightonai/LightOnOCR-3-1B": (16384, False, 1540),
}


def raw() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(MODELS_FILE.read_text(encoding="utf-8"))
    return loaded


def test_every_model_has_one_entry_with_what_its_card_says() -> None:
    table = load_models()
    assert set(table.models) == set(EXPECTED)
    for name, (context, boxes, side) in EXPECTED.items():
        spec = table.models[name]
        assert (spec.max_model_len, spec.figure_boxes, spec.render_longest_side) == (
            context,
            boxes,
            side,
        )
    assert table.default == "lightonai/LightOnOCR-2-1B"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_settings_take_the_models_defaults(name: str) -> None:
    settings = Settings(ocr_model=name)
    spec = load_models().models[name]
    assert settings.model == spec
    for setting, field in SETTINGS_FROM_MODEL.items():
        assert getattr(settings, setting) == getattr(spec, field), setting


def test_an_explicit_setting_wins_over_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRPIPE_OCR_MODEL", "lightonai/LightOnOCR-2-1B-bbox")
    monkeypatch.setenv("OCRPIPE_RENDER_LONGEST_SIDE", "1024")
    monkeypatch.setenv("OCRPIPE_OCR_FIGURE_BOXES", "false")
    settings = Settings()
    assert (settings.render_longest_side, settings.ocr_figure_boxes) == (1024, False)


def test_a_model_not_in_the_table_gets_the_plain_defaults() -> None:
    settings = Settings(ocr_model="someone/fine-tuned-ocr")
    assert settings.model is None
    assert not settings.ocr_figure_boxes
    assert settings.render_longest_side == load_models().default_model.render_longest_side


def test_the_default_model_is_the_tables() -> None:
    assert Settings().ocr_model == load_models().default


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda t: t["models"]["lightonai/LightOnOCR-3-1B"].update(revision="main"), "40-hex"),
        (lambda t: t["models"]["lightonai/LightOnOCR-3-1B"].update(max_model_len=0), "positive"),
        (lambda t: t["models"]["lightonai/LightOnOCR-3-1B"].update(figure_boxes="yes"), "true or"),
        (lambda t: t["models"]["lightonai/LightOnOCR-3-1B"].update(dpi=200), "unknown fields"),
        (lambda t: t.update(default="nobody/none"), "no entry"),
    ],
)
def test_a_mistake_in_the_table_is_refused(change: Any, complaint: str) -> None:
    table = raw()
    change(table)
    with pytest.raises(ValueError, match=complaint):
        parse_models(table)
