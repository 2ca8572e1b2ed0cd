#!/usr/bin/env bash
# Runs every test: starts the real backends on loopback (OpenBao, PostgreSQL, moto), installs Helm's
# SDK for the chart tests and Chromium for the HTML report test, runs the unit and end-to-end suites
# against them, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }

mkdir -p target/test-backends
scripts/openbao.sh start
trap 'scripts/openbao.sh stop || true' EXIT
# PostgreSQL for OpenBao's database secrets engine (generator tests).
scripts/postgres.sh start
trap 'scripts/postgres.sh stop || true; scripts/openbao.sh stop || true' EXIT
# moto (AWS API mock, signatures checked) for the STS/ECR generator tests.
scripts/moto.sh start
trap 'scripts/moto.sh stop || true; scripts/postgres.sh stop || true; scripts/openbao.sh stop || true' EXIT
set -a
# shellcheck disable=SC1091
source target/test-backends/openbao.env
# shellcheck disable=SC1091
source target/test-backends/postgres.env
# shellcheck disable=SC1091
source target/test-backends/moto.env
set +a
# Helm's SDK (PyPI) for the chart tests in tests/e2e_deploy.rs.
scripts/helm.sh install
# Headless Chromium (Debian) for the HTML policy report test in tests/e2e_policy.rs; its
# screenshot lands in target/artifacts/policy-report.png.
scripts/chromium.sh install
# Tests that need a backend fail (instead of skipping) when it is missing.
export ESI_REQUIRE_BACKENDS=1

cargo test --locked --all-targets "$@"
