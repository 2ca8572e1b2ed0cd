#!/usr/bin/env bash
# Measures esi-cli's size and its time from start to exec against a local esi-server.
#
#   scripts/cli-startup.sh [RUNS]     # default 50 runs
#
# Builds esi-server (`release`) and esi-cli the way the image does (profile `release-cli`,
# aws-lc without CPU jitter entropy: see docs/performance.md), starts esi-server on
# examples/quickstart (loopback, a random port, a throw-away data dir, abuse limits off so
# that no run waits on a 429), mints a development token with `esi-server dev-token`,
# then runs `esi-cli --mode=init ... --binary-path=/bin/true` RUNS times: each run reads
# the token and CA, makes a TLS connection, fetches one store secret and one generator
# concurrently, and execs /bin/true. Uses hyperfine when installed, else a bash loop.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
RUNS="${1:-50}"
TARGET="${CARGO_TARGET_DIR:-${ROOT}/target}"
BIN="${TARGET}/release"
CLI_BIN="${TARGET}/release-cli"

cargo build --release --locked --bin esi-server >&2
AWS_LC_SYS_NO_JITTER_ENTROPY=1 cargo build --profile release-cli --locked --bin esi-cli >&2

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "${SERVER_PID}" ]]; then
        kill "${SERVER_PID}" 2>/dev/null || true
        wait "${SERVER_PID}" 2>/dev/null || true
    fi
    rm -rf "${WORK}"
}
trap cleanup EXIT

"${BIN}/esi-server" serve --manifests examples/quickstart --listen 127.0.0.1:0 \
    --data-dir "${WORK}/data" --rate-limit-per-source 0 --rate-limit-per-identity 0 \
    >"${WORK}/server.out" 2>"${WORK}/server.err" &
SERVER_PID=$!
URL=""
for _ in $(seq 1 100); do
    URL="$(sed -n 's/^esi-server listening on //p' "${WORK}/server.out" | head -n1)"
    [[ -n "${URL}" ]] && break
    kill -0 "${SERVER_PID}" 2>/dev/null || { cat "${WORK}/server.err" >&2; exit 1; }
    sleep 0.1
done
[[ -n "${URL}" ]] || { echo "esi-server did not start" >&2; exit 1; }

# DEVELOPMENT ONLY: the quickstart key is published in this repository.
"${BIN}/esi-server" dev-token \
    --key examples/quickstart/dev-signing-key.pem --kid quickstart-dev-1 \
    --issuer https://quickstart.esi.invalid --audience esi-quickstart \
    --namespace demo --service-account app >"${WORK}/token"

CLI=("${CLI_BIN}/esi-cli" --mode=init
    "--federated-server-url=${URL}" --federated-store=demo-store
    "--federated-token=${WORK}/token" "--federated-ca-crt=${WORK}/data/tls/ca.crt"
    --federated-generators=demo/Password/demo-password
    --external-secrets=db-credentials --inject-on-env=PW=demo-password.password
    --binary-path=/bin/true)

# One checked run first: the measurement is meaningless if it fails.
"${CLI[@]}" || { echo "esi-cli failed against ${URL}" >&2; exit 1; }

# The profile strips the binary already; `strip` again to show nothing is left to take.
SIZE="$(stat -c %s "${CLI_BIN}/esi-cli")"
STRIPPED="$(strip -o "${WORK}/esi-cli.stripped" "${CLI_BIN}/esi-cli" 2>/dev/null && stat -c %s "${WORK}/esi-cli.stripped" || echo "n/a")"
echo "machine: $(nproc) cores, $(uname -sm)"
echo "esi-cli size: ${SIZE} bytes ($((SIZE / 1024)) KiB); after strip: ${STRIPPED} bytes"
echo "esi-server size: $(stat -c %s "${BIN}/esi-server") bytes"

if command -v hyperfine >/dev/null 2>&1; then
    printf -v CMD '%q ' "${CLI[@]}"
    hyperfine --warmup 3 --runs "${RUNS}" -N --export-json "${WORK}/h.json" "${CMD}"
    python3 - "${WORK}/h.json" <<'PY' 2>/dev/null || true
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print("start->exec: mean %.1f ms, median %.1f ms, min %.1f ms, max %.1f ms, user %.1f ms, system %.1f ms (hyperfine, %d runs)" % (
    r["mean"]*1e3, r["median"]*1e3, r["min"]*1e3, r["max"]*1e3, r["user"]*1e3, r["system"]*1e3, len(r["times"])))
PY
else
    times=()
    for _ in $(seq 1 "${RUNS}"); do
        t0=$(date +%s%N)
        "${CLI[@]}"
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v n="${RUNS}" '
        { v[NR] = $1; s += $1 }
        END { printf "start->exec: mean %.1f ms, median %.1f ms, min %.1f ms, max %.1f ms (bash loop, %d runs)\n",
              s / NR / 1000, v[int((NR + 1) / 2)] / 1000, v[1] / 1000, v[NR] / 1000, n }'
fi
