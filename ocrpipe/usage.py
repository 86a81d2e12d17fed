"""What OCR of one page cost: a leaf of the contract, so the error classes that carry it
(:class:`~ocrpipe.errors.OcrRejected`) and the records that store it depend on nothing
above them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OcrUsage:
    """What OCR of one page cost in one delivery: the bill and the page's provenance."""

    model: str
    temperature: float  # the one whose reply was kept
    finish_reason: str  # of the reply that was kept
    attempts: int  # requests sent, failed and looping ones included
    prompt_tokens: int  # summed over every reply read
    completion_tokens: int  # summed over every reply read, loops included
    ocr_seconds: float  # time in requests that returned a reply

    def as_dict(self) -> dict[str, str | int | float]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "finish_reason": self.finish_reason,
            "attempts": self.attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ocr_seconds": round(self.ocr_seconds, 3),
        }
