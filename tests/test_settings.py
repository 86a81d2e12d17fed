from __future__ import annotations

import pytest

from ocrpipe.settings import Settings


def test_an_unknown_ocrpipe_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRPIPE_OCR_BUDGT_S", "3")
    with pytest.raises(ValueError, match=r"OCRPIPE_OCR_BUDGT_S.*OCRPIPE_OCR_BUDGET_S"):
        Settings()


def test_known_variables_and_other_prefixes_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRPIPE_OCR_BUDGET_S", "3")
    monkeypatch.setenv("OCRPIPEX_UNRELATED", "1")
    assert Settings().ocr_budget_s == 3


def test_the_local_stack_environment_reproduces_every_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ocrpipe.local.stack import settings_env

    original = Settings(ocr_temperatures=(0.1, 0.4), project="p")
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original
