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


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ocr_max_tokens": 8192}, r"ocr_max_tokens=8192 must be below .*ocr_max_model_len=8192"),
        ({"ocr_max_tokens": 20000, "ocr_max_model_len": 16384}, r"ocr_max_tokens=20000"),
        ({"ocr_temperatures": (0.2, 2.5)}, r"ocr_temperatures.*\[0, 2\].*2\.5"),
        ({"ocr_temperatures": (-0.1, 0.3)}, r"ocr_temperatures.*\[0, 2\].*-0\.1"),
    ],
)
def test_settings_vllm_would_answer_400_to_are_refused_at_startup(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**fields)  # type: ignore[arg-type]


def test_the_model_context_is_a_setting_below_which_max_tokens_must_stay() -> None:
    assert Settings().ocr_max_model_len == 8192  # LightOnOCR-2-1B as gpu_image serves it
    assert Settings(ocr_max_tokens=8000, ocr_max_model_len=16384).ocr_max_tokens == 8000
