"""Structural checks of gpu_image/: the image builds on the vLLM base (its own user, caches
it can write), on the vLLM + transformers pair LightOn tests, with the model pinned to a
commit; and the entrypoint starts vLLM with settings that match the model.

Nothing here builds the image (no Docker engine): the Dockerfile is parsed, and the two
shell scripts the image runs are run here against a stand-in ``vllm`` command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

GPU_IMAGE = Path(__file__).resolve().parents[1] / "gpu_image"
DOCKERFILE = GPU_IMAGE / "Dockerfile"
# (vLLM image tag, transformers) pairs the model's makers test: LightOn's own client pins
# vLLM 0.30.0 with transformers 5.16.1 (5.17 breaks the 1B models on 0.30.0; vLLM 0.27.1
# loops in compiled mode).
TESTED_PAIRS = {("v0.30.0-cu129", "5.16.1")}
BASE_USER = {"2000", "vllm", "2000:0", "vllm:0"}  # the vllm/vllm-openai images' own user
BASE_HOME = "/home/vllm"
CACHE_VARS = ("HOME", "HF_HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR",
              "TORCHINDUCTOR_CACHE_DIR")  # fmt: skip
MAX_MODEL_LEN = {"lightonai/LightOnOCR-2-1B": "8192", "lightonai/LightOnOCR-3-1B": "16384"}


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


def test_model_revision_defaults_to_a_commit() -> None:
    args = dict(
        rest.partition("=")[::2] for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    assert re.fullmatch(r"[0-9a-f]{40}", args["MODEL_REVISION"]), args.get("MODEL_REVISION")
    assert args["MODEL_ID"] == "lightonai/LightOnOCR-2-1B"
    assert "check-model.sh" in runs()


def check_model(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "model.env"
    return subprocess.run(
        ["sh", str(GPU_IMAGE / "check-model.sh"), *args, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("model", sorted(MAX_MODEL_LEN))
def test_the_build_derives_serve_settings_from_the_model(tmp_path: Path, model: str) -> None:
    done = check_model(tmp_path, model, "a" * 40, "")
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "model.env").read_text(encoding="utf-8")
    assert f"MODEL_ID={model}\n" in written
    assert f"MODEL_MAX_LEN={MAX_MODEL_LEN[model]}\n" in written


@pytest.mark.parametrize(
    ("model", "revision", "max_len", "complaint"),
    [
        ("lightonai/LightOnOCR-2-1B", "main", "", "40-hex"),
        ("lightonai/LightOnOCR-2-1B", "c97bd377", "", "40-hex"),
        ("someone/other-ocr", "b" * 40, "", "MAX_MODEL_LEN"),
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
