"""Structural checks of gpu_image/: the image builds on the vLLM base (its own user, caches
it can write), on the vLLM + transformers pair LightOn tests, with the model pinned to a
commit; and the entrypoint starts vLLM with settings that match the model.

Nothing here builds the image (no Docker engine): the Dockerfile is parsed, and the two
shell scripts the image runs are run here against a stand-in ``vllm`` command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from ocrpipe.models import MODELS_FILE, load_models

ROOT = Path(__file__).resolve().parents[1]
GPU_IMAGE = ROOT / "gpu_image"
DOCKERFILE = GPU_IMAGE / "Dockerfile"
# (vLLM image tag, transformers) pairs the model's makers test: LightOn's own client pins
# vLLM 0.30.0 with transformers 5.16.1 (5.17 breaks the 1B models on 0.30.0; vLLM 0.27.1
# loops in compiled mode).
TESTED_PAIRS = {("v0.30.0-cu129", "5.16.1")}
BASE_USER = {"2000", "vllm", "2000:0", "vllm:0"}  # the vllm/vllm-openai images' own user
BASE_HOME = "/home/vllm"
CACHE_VARS = ("HOME", "HF_HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR",
              "TORCHINDUCTOR_CACHE_DIR")  # fmt: skip
TABLE = load_models()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def runs() -> str:
    return "\n".join(rest for word, rest in instructions() if word == "RUN")


def test_base_image_and_transformers_are_the_pair_lighton_tests() -> None:
    (base,) = [rest for word, rest in instructions() if word == "FROM"]
    match = re.fullmatch(r"vllm/vllm-openai:(v[\w.-]+)(@sha256:[0-9a-f]{64})?", base)
    assert match, base
    pins = re.findall(r"transformers==([\w.]+)", runs())
    assert len(pins) == 1, pins
    assert (match.group(1), pins[0]) in TESTED_PAIRS
    assert env()["VLLM_ENABLE_CUDA_COMPATIBILITY"] == "1"  # 12.9 user space on the 535 driver


def test_runs_as_the_base_images_user_without_creating_it_again() -> None:
    assert not re.search(r"\b(useradd|adduser)\b", runs()), "the base image already has vllm"
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users and users[-1] in BASE_USER, users


def test_everything_the_server_writes_at_run_time_is_writable_by_that_user() -> None:
    values = env()
    run = runs()
    for var in CACHE_VARS:
        path = values.get(var, "")
        assert path.startswith((BASE_HOME, "/tmp")), (var, path)
        if path.startswith(BASE_HOME):
            # RUN steps run as root: a directory they create is root's unless handed over.
            assert re.search(rf"mkdir -p [^\n]*{re.escape(path)}(\s|$)", run), (var, path)
    assert re.search(rf"chown -R 2000:0 {BASE_HOME}(\s|$)", run)


def test_the_model_comes_from_the_model_table() -> None:
    args = dict(
        rest.partition("=")[::2] for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    # Empty build arguments: the table's default model, the entry's commit and context.
    assert args["MODEL_ID"] == args["MODEL_REVISION"] == args["MAX_MODEL_LEN"] == '""'
    assert re.fullmatch(r"[0-9a-f]{40}", TABLE.default_model.revision or "")
    copies = [rest.split() for word, rest in instructions() if word == "COPY"]
    assert ["ocrpipe/models.json", "/etc/ocrpipe/models.json"] in copies
    assert "check-model.sh /etc/ocrpipe/models.json" in runs()
    assert re.search(r"\. /etc/ocrpipe/model\.env\s+&& hf download", runs())
    # The context is the repository root; .dockerignore lets in what the image copies.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for source, _ in copies:
        assert f"!{source}" in ignore or f"!{source.split('/')[0]}/" in ignore, source
    build = (GPU_IMAGE / "cloudbuild.yaml").read_text(encoding="utf-8")
    assert re.search(r"- --file\n\s+- gpu_image/Dockerfile\n", build)
    assert re.search(r"- \$\{_IMAGE\}\n\s+- \.\n", build)


def check_model(
    tmp_path: Path, *args: str, models: Path = MODELS_FILE
) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "model.env"
    return subprocess.run(
        ["sh", str(GPU_IMAGE / "check-model.sh"), str(models), *args, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("model", sorted(TABLE.models))
def test_the_build_derives_serve_settings_from_the_models_entry(tmp_path: Path, model: str) -> None:
    spec = TABLE.models[model]
    done = check_model(tmp_path, model, "" if spec.revision else "a" * 40, "")
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "model.env").read_text(encoding="utf-8")
    assert f"MODEL_ID={model}\n" in written
    assert f"MODEL_REVISION={spec.revision or 'a' * 40}\n" in written
    assert f"MODEL_MAX_LEN={spec.max_model_len}\n" in written


def test_no_build_arguments_give_the_tables_default(tmp_path: Path) -> None:
    done = check_model(tmp_path, "", "", "")
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "model.env").read_text(encoding="utf-8")
    assert f"MODEL_ID={TABLE.default}\n" in written
    assert f"MODEL_REVISION={TABLE.default_model.revision}\n" in written


def test_a_new_model_is_one_entry_in_the_table(tmp_path: Path) -> None:
    table = json.loads(MODELS_FILE.read_text(encoding="utf-8"))
    entry = {"revision": "d" * 40, "max_model_len": 32768, "figure_boxes": True}
    table["models"]["someone/next-ocr"] = {**entry, "render_longest_side": 1540}
    models = tmp_path / "models.json"
    models.write_text(json.dumps(table), encoding="utf-8")
    done = check_model(tmp_path, "someone/next-ocr", "", "", models=models)
    assert done.returncode == 0, done.stderr
    assert "MODEL_MAX_LEN=32768\n" in (tmp_path / "model.env").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("model", "revision", "max_len", "complaint"),
    [
        ("lightonai/LightOnOCR-2-1B", "main", "", "40-hex"),
        ("lightonai/LightOnOCR-2-1B", "c97bd377", "", "40-hex"),
        ("lightonai/LightOnOCR-3-1B", "", "", "40-hex"),  # its entry has no checked commit
        ("lightonai/LightOnOCR-2-1B", "", "8k", "not a number"),
        ("someone/other-ocr", "b" * 40, "4096", "no entry in ocrpipe/models.json"),
    ],
)
def test_the_build_fails_on_a_moving_revision_or_an_unknown_model(
    tmp_path: Path, model: str, revision: str, max_len: str, complaint: str
) -> None:
    done = check_model(tmp_path, model, revision, max_len)
    assert done.returncode != 0 and complaint in done.stderr, (done.returncode, done.stderr)


def serve_args(tmp_path: Path, model: str, **extra: str) -> list[str]:
    """What the entrypoint passes to ``vllm serve``, through a stand-in vllm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "vllm"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n', encoding="utf-8")
    fake.chmod(0o755)
    assert check_model(tmp_path, model, "c" * 40, "").returncode == 0
    environ = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_DIR": "/models/m",
               "MODEL_ENV_FILE": str(tmp_path / "model.env"), **extra}  # fmt: skip
    done = subprocess.run(
        ["sh", str(GPU_IMAGE / "entrypoint.sh")],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_server_serves_the_baked_model_under_its_own_name(tmp_path: Path) -> None:
    args = serve_args(tmp_path, "lightonai/LightOnOCR-3-1B")
    assert flag(args, "--served-model-name") == "lightonai/LightOnOCR-3-1B"
    assert flag(args, "--max-model-len") == "16384"
    assert "--enforce-eager" not in args  # compiled by default


def test_eager_mode_is_a_setting(tmp_path: Path) -> None:
    args = serve_args(tmp_path, "lightonai/LightOnOCR-2-1B", COMPILE_MODE="eager")
    assert "--enforce-eager" in args and flag(args, "--max-model-len") == "8192"


def test_a_service_expecting_another_model_than_the_image_holds_does_not_start(
    tmp_path: Path,
) -> None:
    with pytest.raises(AssertionError, match="LightOnOCR-3-1B"):
        serve_args(
            tmp_path, "lightonai/LightOnOCR-2-1B", EXPECTED_MODEL="lightonai/LightOnOCR-3-1B"
        )
