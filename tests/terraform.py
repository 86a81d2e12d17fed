"""terraform/ parsed with python-hcl2, for the tests that check it (static only: nothing
runs ``terraform validate`` or ``plan``; no provider downloads on this machine or CI).

python-hcl2 8.x keeps HCL's quoting: string literals arrive as ``'"text"'``, expressions as
``'${expr}'`` and block labels as ``'"name"'``. :func:`clean` strips the literal quotes and
the ``__is_block__`` / ``__comments__`` markers so the tests compare plain values.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import hcl2

TERRAFORM = Path(__file__).resolve().parents[1] / "terraform"


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('\\"', '"')
    return text


def clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            unquote(k): clean(v)
            for k, v in value.items()
            if k not in ("__is_block__", "__comments__")
        }
    if isinstance(value, list):
        return [clean(v) for v in value]
    return unquote(value) if isinstance(value, str) else value


@cache
def load_terraform() -> dict[str, Any]:
    """Every .tf file merged: ``{"resource": {type: {name: body}}, "data": {...},
    "variable": {...}, "output": {...}, "locals": {...}, "terraform": [blocks]}``. Parsed
    once per run: callers read it, never change it."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    merged["locals"] = {}
    merged["terraform"] = []
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            doc = clean(hcl2.load(handle))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
        merged["terraform"].extend(doc.get("terraform", []))
    return merged
