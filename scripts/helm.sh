#!/usr/bin/env bash
# Helm for the chart tests and the plain manifests, from PyPI (no helm binary is packaged
# for the registries this project's machines reach): installs helm-python-sdk (Helm's own Go
# SDK behind a Python binding) when missing, then runs scripts/helm.py with the arguments.
#
#   scripts/helm.sh install                       # install only (scripts/test.sh does this)
#   scripts/helm.sh template deploy/charts/esi-federation [-f VALUES] [--set-json JSON]
#   scripts/helm.sh lint deploy/charts/esi-federation [-f VALUES] [--set-json JSON]
#   scripts/helm.sh manifests [--check]           # deploy/kubernetes/*.yaml from *.values.yaml
#
# Users with the real helm CLI get the same output from `helm template` / `helm lint --strict`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the Helm SDK version decides rendering details (v0.2.2 binds Helm v4.2.3).
HELM_PYTHON_SDK_VERSION="0.2.2"

ensure() {
    command -v python3 >/dev/null 2>&1 || { echo "helm.sh: python3 is required" >&2; exit 1; }
    if ! python3 -c 'import helm_python' >/dev/null 2>&1; then
        python3 -m pip install --quiet --disable-pip-version-check \
            "helm-python-sdk==${HELM_PYTHON_SDK_VERSION}" >&2 \
            || { echo "helm.sh: pip install helm-python-sdk failed" >&2; exit 1; }
    fi
}

case "${1:-}" in
    install)
        ensure
        python3 -c 'import helm_python as h; print("helm SDK", h.helm_sdk_version())'
        ;;
    template | lint | manifests)
        ensure
        exec python3 scripts/helm.py "$@"
        ;;
    *)
        echo "usage: scripts/helm.sh install|template|lint|manifests ..." >&2
        exit 2
        ;;
esac
