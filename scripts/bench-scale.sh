#!/usr/bin/env bash
# Scale benchmark (issue 9), directory mode: N Authorizations with distinct subjects, PER_FILE
# per file, plus the quickstart federation and fake store. Reports, on the release build:
#   - time from start to /readyz answering 200, and RSS then;
#   - time for one added Authorization to take effect (a request flips from 404 to 200) while
#     another client keeps requesting, and that client's non-200 answers (want 0);
#   - RSS after that reload.
#
#   scripts/bench-scale.sh                     # N=100000 PER_FILE=1000
#   N=10000 scripts/bench-scale.sh             # smaller run
#   ESI_SERVER_BIN=path scripts/bench-scale.sh # another build
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
PER_FILE="${PER_FILE:-1000}"
BIN="${ESI_SERVER_BIN:-target/release/esi-server}"
if [[ ! -x "${BIN}" ]]; then
    cargo build --release --locked --bin esi-server
fi
WORK="$(mktemp -d)"
SERVER_PID=""
CLIENT_PID=""
cleanup() {
    [[ -n "${CLIENT_PID}" ]] && kill "${CLIENT_PID}" 2>/dev/null || true
    [[ -n "${SERVER_PID}" ]] && kill "${SERVER_PID}" 2>/dev/null || true
    rm -rf "${WORK}"
}
trap cleanup EXIT

mkdir -p "${WORK}/manifests" "${WORK}/data"
cp examples/quickstart/federation.yaml examples/quickstart/store.yaml "${WORK}/manifests/"
python3 - "${WORK}/manifests" "${N}" "${PER_FILE}" <<'PY'
import sys
out, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for f in range((n + per - 1) // per):
    docs = []
    for i in range(f * per, min(n, (f + 1) * per)):
        docs.append(f"""apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: scale-{i}}}
spec:
  federationRef: {{kind: KubernetesFederation, name: quickstart-dev}}
  subject: {{oidc: {{issuer: https://quickstart.esi.invalid, subject: "system:serviceaccount:ns-{i}:sa-{i}"}}}}
  allowedClusterSecretStores: [demo-store]
""")
    with open(f"{out}/authz-{f:04d}.yaml", "w") as fh:
        fh.write("---\n".join(docs))
PY

token() {
    "${BIN}" dev-token --key examples/quickstart/dev-signing-key.pem \
        --issuer https://quickstart.esi.invalid --audience esi-quickstart \
        --kid quickstart-dev-1 --namespace "$1" --service-account "$2" --ttl 1h
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/${SERVER_PID}/status"; }
now_ms() { date +%s%3N; }

start=$(now_ms)
RUST_LOG=warn "${BIN}" serve --manifests "${WORK}/manifests" --listen 127.0.0.1:0 \
    --data-dir "${WORK}/data" --reload-interval 500ms \
    --rate-limit-per-source 0 --rate-limit-per-identity 0 \
    >"${WORK}/stdout" 2>"${WORK}/stderr" &
SERVER_PID=$!
URL=""
while [[ -z "${URL}" ]]; do
    kill -0 "${SERVER_PID}" 2>/dev/null || { cat "${WORK}/stderr"; exit 1; }
    URL="$(sed -n 's/^esi-server listening on //p' "${WORK}/stdout")"
    sleep 0.05
done
CA="${WORK}/data/tls/ca.crt"
until curl -fsS -o /dev/null --cacert "${CA}" "${URL}/readyz"; do sleep 0.05; done
ready=$(( $(now_ms) - start ))
echo "authorizations=${N} files=$(( (N + PER_FILE - 1) / PER_FILE ))"
echo "ready_ms=${ready} rss_mb=$(rss_mb)"

get() {
    curl -s -o /dev/null -w '%{http_code}' --cacert "${CA}" -H "Authorization: Bearer $1" \
        -d '{}' "${URL}/secretstore/demo-store/secrets/db-credentials"
}
SEEN="$(token ns-0 sa-0)"
NEW="$(token ns-new sa-new)"
[[ "$(get "${SEEN}")" == 200 ]] || { echo "an existing subject is not served"; exit 1; }
[[ "$(get "${NEW}")" == 404 ]] || { echo "the new subject is served before its Authorization"; exit 1; }

# A client that keeps requesting throughout the reload.
(
    ok=0; bad=0
    trap 'echo "client_requests=$((ok + bad)) client_non_200=${bad}" > "${WORK}/client"; exit 0' TERM
    while true; do
        if [[ "$(get "${SEEN}")" == 200 ]]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    done
) &
CLIENT_PID=$!
sleep 1
cat >"${WORK}/manifests/authz-new.yaml" <<YAML
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {name: scale-new}
spec:
  federationRef: {kind: KubernetesFederation, name: quickstart-dev}
  subject: {oidc: {issuer: https://quickstart.esi.invalid, subject: "system:serviceaccount:ns-new:sa-new"}}
  allowedClusterSecretStores: [demo-store]
YAML
changed=$(now_ms)
until [[ "$(get "${NEW}")" == 200 ]]; do sleep 0.02; done
echo "change_in_effect_ms=$(( $(now_ms) - changed )) (reload interval 500 ms included)"
sleep 1
kill -TERM "${CLIENT_PID}"; wait "${CLIENT_PID}" 2>/dev/null || true; CLIENT_PID=""
cat "${WORK}/client"
echo "rss_after_reload_mb=$(rss_mb)"
