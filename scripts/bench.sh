#!/usr/bin/env bash
# Load test on this machine: esi-server (release build, HTTPS) against OpenBao's own KV
# read of the same secret, side by side. Prints requests/s and latency percentiles.
#
#   scripts/bench.sh                 # DURATION=10s CONNECTIONS=32 THREADS=2 by default
#   scripts/bench.sh --check         # dry run: write the configuration, check it with
#                                    # `esi-server check` (ESI_SERVER_BIN, default the debug
#                                    # build), exit; no release build, no backend, no load
#
# Runs:  openbao-direct    GET OpenBao KV v2 (plain HTTP dev listener, root token)
#        esi-fake          esi-server, fake store (gateway cost only: TLS, JWT, Cedar)
#        esi-vault         esi-server, vault store in front of the same OpenBao
#        esi-vault-cached  esi-server, vault store with the store cache on (`spec.cache`,
#                          ttl 30s): after the first read, answers come from memory
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
CHECK_ONLY=""
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    [[ -n "${SERVER_PID}" ]] && kill "${SERVER_PID}" 2>/dev/null || true
    [[ -n "${CHECK_ONLY}" ]] || scripts/openbao.sh stop || true
    rm -rf "${WORK}"
}
trap cleanup EXIT

if [[ -n "${CHECK_ONLY}" ]]; then
    BIN="${ESI_SERVER_BIN:-target/debug/esi-server}"
    [[ -x "${BIN}" ]] || cargo build --locked --bin esi-server
    # Placeholders: `check` builds the stores without calling their backend.
    VAULT_ADDR="http://127.0.0.1:8200"
    VAULT_TOKEN="bench-check-placeholder"
else
    if ! command -v wrk >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || { echo "install wrk first"; exit 1; }
    fi

    cargo build --release --locked --bin esi-server
    BIN=target/release/esi-server

    mkdir -p target/test-backends
    scripts/openbao.sh start
    set -a; source target/test-backends/openbao.env; set +a

    curl -fsS -o /dev/null -H "X-Vault-Token: ${VAULT_TOKEN}" -X POST \
        -d '{"data":{"username":"bench","password":"bench-password-value"}}' \
        "${VAULT_ADDR}/v1/secret/data/bench/db"
fi

KID="$(python3 -c 'import json;print(json.load(open("tests/fixtures/keys/jwks.json"))["rsa-1"]["kid"])')"
JWKS="$(python3 -c 'import json;print(json.dumps({"keys":[json.load(open("tests/fixtures/keys/jwks.json"))["rsa-1"]]}))')"
# A vault ClusterSecretStore NAME on the OpenBao, with EXTRA lines under `spec:`.
vault_store() {
    cat <<YAML
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: $1}
spec:
  provider:
    vault:
      server: ${VAULT_ADDR}
      path: secret
      version: v2
      auth: {tokenSecretRef: {name: vault, namespace: esi, key: token}}
${2:-}
YAML
}
mkdir -p "${WORK}/m"
cat >"${WORK}/m/all.yaml" <<YAML
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {name: bench}
spec:
  issuer: https://bench.invalid
  audiences: [esi-bench]
  jwks: '${JWKS}'
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {name: bench}
spec:
  federationRef: {kind: KubernetesFederation, name: bench}
  subject: {oidc: {issuer: "https://bench.invalid", subject: "system:serviceaccount:bench:client"}}
  allowedClusterSecretStores: [fake, vault, vault-cached]
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: fake}
spec:
  provider:
    fake:
      data: [{key: bench/db, value: '{"username":"bench","password":"bench-password-value"}'}]
$(vault_store vault)
$(vault_store vault-cached "  # Extension: the store cache (docs/providers.md, \"Store cache\").
  cache: {ttl: 30s, maxEntries: 1000, maxBytes: 16Mi}")
---
apiVersion: v1
kind: Secret
metadata: {name: vault, namespace: esi}
stringData: {token: "${VAULT_TOKEN}"}
YAML

if [[ -n "${CHECK_ONLY}" ]]; then
    "${BIN}" check --manifests "${WORK}/m"
    echo "bench configuration is valid"
    exit 0
fi

# Requests are logged at info; measure with warnings only, as a production setting would.
# One load generator is one source and one identity: the abuse limits (which would answer
# 429 after the first few hundred requests) are switched off for the measurement.
RUST_LOG=warn "${BIN}" serve --manifests "${WORK}/m" --listen 127.0.0.1:0 --data-dir "${WORK}/data" \
    --rate-limit-per-source 0 --rate-limit-per-identity 0 --log-format json >"${WORK}/stdout" 2>"${WORK}/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "${WORK}/stdout" 2>/dev/null && break; sleep 0.1; done
URL="$(sed -n 's/^esi-server listening on //p' "${WORK}/stdout")"

TOKEN="$("${BIN}" dev-token --key tests/fixtures/keys/rsa-1.pem --alg RS256 --kid "${KID}" \
    --issuer https://bench.invalid --audience esi-bench --namespace bench --service-account client)"

cat >"${WORK}/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${TOKEN}"
LUA
cat >"${WORK}/bao.lua" <<LUA
wrk.headers["X-Vault-Token"] = "${VAULT_TOKEN}"
LUA

check() { # sanity: each target answers 200 before it is measured
    local code
    code="$(curl -sk -o /dev/null -w '%{http_code}' "$@")"
    [[ "${code}" == 200 ]] || { echo "sanity check failed (${code}): $*"; tail -5 "${WORK}/server.log"; exit 1; }
}
check -H "X-Vault-Token: ${VAULT_TOKEN}" "${VAULT_ADDR}/v1/secret/data/bench/db"
check -X POST -H "Authorization: Bearer ${TOKEN}" -d '{}' "${URL}/secretstore/fake/secrets/bench%2Fdb"
check -X POST -H "Authorization: Bearer ${TOKEN}" -d '{}' "${URL}/secretstore/vault/secrets/bench%2Fdb"
check -X POST -H "Authorization: Bearer ${TOKEN}" -d '{}' "${URL}/secretstore/vault-cached/secrets/bench%2Fdb"

run() { # name, lua, url
    local out
    out="$(wrk -t"${THREADS}" -c"${CONNECTIONS}" -d"${DURATION}" --latency -s "$2" "$3")"
    local rps p50 p99 errors
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"${out}")"
    p50="$(awk '$1=="50%" {print $2}' <<<"${out}")"
    p99="$(awk '$1=="99%" {print $2}' <<<"${out}")"
    errors="$(awk '/Non-2xx/ {print $NF}' <<<"${out}")"
    printf '%-16s %12s %10s %10s %8s\n' "$1" "${rps}" "${p50}" "${p99}" "${errors:-0}"
    LAST_RPS="${rps}"
    [[ -z "${errors}" ]] || { echo "$1: non-2xx answers: the figures above are not valid"; exit 1; }
}

echo
echo "machine: $(nproc) cores; wrk -t${THREADS} -c${CONNECTIONS} -d${DURATION}; client and servers share the cores"
printf '%-16s %12s %10s %10s %8s\n' target "req/s" p50 p99 non-2xx
run openbao-direct "${WORK}/bao.lua" "${VAULT_ADDR}/v1/secret/data/bench/db"
DIRECT_RPS="${LAST_RPS}"
run esi-fake "${WORK}/post.lua" "${URL}/secretstore/fake/secrets/bench%2Fdb"
run esi-vault "${WORK}/post.lua" "${URL}/secretstore/vault/secrets/bench%2Fdb"
run esi-vault-cached "${WORK}/post.lua" "${URL}/secretstore/vault-cached/secrets/bench%2Fdb"
# Issue 14's target: the cached store at five times OpenBao's direct read, or more.
awk -v c="${LAST_RPS}" -v d="${DIRECT_RPS}" 'BEGIN { if (d > 0) printf "esi-vault-cached / openbao-direct: %.2fx (target >= 5x)\n", c / d }'
