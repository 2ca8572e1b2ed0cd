#!/usr/bin/env bash
# End to end on a real (kind) cluster, for users with Docker, kind, kubectl, helm and openssl:
#
#   deploy/e2e/kind.sh            # from the repository root or anywhere
#
# 1. creates a kind cluster (CLUSTER, default esi-e2e; reused when it exists),
# 2. builds the image from the repository's Dockerfile and loads it into the cluster,
# 3. installs External Secrets Operator's CRDs (ESO_VERSION) and ours,
# 4. makes a throw-away CA and server certificate and installs the chart (Kubernetes mode,
#    two replicas, ledger as Kubernetes objects),
# 5. registers the kind cluster itself as a client cluster (a KubernetesFederation holding
#    its published JWKS), a `fake` ClusterSecretStore with one secret, and an Authorization
#    for the ServiceAccount demo/app,
# 6. runs esi-cli in a Pod as demo/app (projected token, audience esi-e2e) to fetch the
#    secret into a file, which a second container prints, and checks the value;
# 7. checks that another ServiceAccount is refused.
#
# It leaves the cluster running for a look around; CLEANUP=1 deletes it at the end.
# Not run in CI (no Docker there): the chart is rendered and checked by tests/e2e_deploy.rs.
set -euo pipefail

CLUSTER="${CLUSTER:-esi-e2e}"
ESO_VERSION="${ESO_VERSION:-v0.17.0}"
IMAGE="${IMAGE:-esi-federation:e2e}"
NS=esi-system
RELEASE=esi-federation
AUDIENCE=esi-e2e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

say() { printf '\n== %s\n' "$*"; }
die() {
    echo "kind.sh: $*" >&2
    echo "--- server logs ---" >&2
    kubectl -n "${NS}" logs "deployment/${RELEASE}" --tail=50 >&2 || true
    exit 1
}

for tool in docker kind kubectl helm openssl; do
    command -v "${tool}" >/dev/null 2>&1 || { echo "kind.sh: ${tool} is required" >&2; exit 1; }
done

say "kind cluster ${CLUSTER}"
if ! kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    kind create cluster --name "${CLUSTER}" --wait 120s
fi
kubectl config use-context "kind-${CLUSTER}" >/dev/null

say "image ${IMAGE}"
docker build -t "${IMAGE}" "${ROOT}"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"

say "CRDs: External Secrets Operator ${ESO_VERSION} (ClusterSecretStore, generators, GeneratorState) and ours"
kubectl apply --server-side -f \
    "https://raw.githubusercontent.com/external-secrets/external-secrets/${ESO_VERSION}/deploy/crds/bundle.yaml" >/dev/null
# Ours: the committed file, else what the image's server prints (the same text).
if [[ -f "${ROOT}/deploy/crds/esi-federation-crds.yaml" ]]; then
    kubectl apply --server-side -f "${ROOT}/deploy/crds/esi-federation-crds.yaml"
else
    docker run --rm "${IMAGE}" crds | kubectl apply --server-side -f -
fi
kubectl wait --for=condition=Established --timeout=60s \
    crd/authorizations.federation.external-secrets.io \
    crd/kubernetesfederations.identity.federation.external-secrets.io \
    crd/oidcfederations.identity.federation.external-secrets.io \
    crd/spiffefederations.identity.federation.external-secrets.io \
    crd/clustersecretstores.external-secrets.io

say "TLS: a throw-away CA and the server's certificate"
SVC_DNS="${RELEASE}.${NS}.svc"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=esi-e2e CA" -keyout "${WORK}/ca.key" -out "${WORK}/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=${SVC_DNS}" -keyout "${WORK}/tls.key" -out "${WORK}/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local,DNS:%s.%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
    "${SVC_DNS}" "${SVC_DNS}" "${RELEASE}" "${NS}" >"${WORK}/ext.cnf"
openssl x509 -req -in "${WORK}/tls.csr" -CA "${WORK}/ca.crt" -CAkey "${WORK}/ca.key" \
    -CAcreateserial -days 2 -extfile "${WORK}/ext.cnf" -out "${WORK}/tls.crt" 2>/dev/null
kubectl create namespace "${NS}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "${NS}" create secret tls "${RELEASE}-tls" --cert="${WORK}/tls.crt" \
    --key="${WORK}/tls.key" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

say "helm install ${RELEASE}"
repo="${IMAGE%:*}"
tag="${IMAGE##*:}"
helm upgrade --install "${RELEASE}" "${ROOT}/deploy/charts/esi-federation" -n "${NS}" \
    --set image.repository="${repo}" --set image.tag="${tag}" --set image.pullPolicy=Never \
    --wait --timeout 180s || die "the release did not become ready"

say "register the kind cluster as a client cluster (its published JWKS)"
# The keys that sign this cluster's ServiceAccount tokens, and their issuer, as the API
# server publishes them (another cluster would run these two commands against itself).
JWKS="$(kubectl get --raw /openid/v1/jwks)"
ISSUER="$(kubectl get --raw /.well-known/openid-configuration | sed -n 's/.*"issuer":"\([^"]*\)".*/\1/p')"
[[ -n "${ISSUER}" ]] || die "no issuer in the cluster's discovery document"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo create serviceaccount app --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo create serviceaccount intruder --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo create configmap esi-ca --from-file=ca.crt="${WORK}/ca.crt" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - <<EOF
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata:
  name: kind-self
spec:
  issuer: ${ISSUER}
  audiences: [${AUDIENCE}]
  jwks: '${JWKS}'
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata:
  name: demo-store
spec:
  provider:
    fake:
      data:
        - key: db-credentials
          value: '{"username":"app","password":"from-the-fake-store"}'
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata:
  name: demo-app
spec:
  federationRef: {kind: KubernetesFederation, name: kind-self}
  subject:
    oidc:
      issuer: ${ISSUER}
      subject: system:serviceaccount:demo:app
  allowedClusterSecretStores: [demo-store]
EOF

# One Pod per ServiceAccount: esi-cli (init container, from our image) writes the secret's
# password into a shared in-memory volume, then busybox prints it.
fetch_pod() {
    local sa="$1"
    kubectl -n demo delete pod "fetch-${sa}" --ignore-not-found --wait >/dev/null
    kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: fetch-${sa}
  namespace: demo
spec:
  serviceAccountName: ${sa}
  automountServiceAccountToken: false
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  initContainers:
    - name: esi-cli
      image: ${IMAGE}
      imagePullPolicy: Never
      command:
        - /usr/local/bin/esi-cli
        - --mode=init
        - --federated-server-url=https://${SVC_DNS}
        - --federated-store=demo-store
        - --external-secrets=db-credentials
        - --inject-on-file=/secrets/password=db-credentials.password
        - --federated-token=/var/run/secrets/esi/token
        - --federated-ca-crt=/etc/esi-ca/ca.crt
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts:
        - {name: token, mountPath: /var/run/secrets/esi, readOnly: true}
        - {name: ca, mountPath: /etc/esi-ca, readOnly: true}
        - {name: secrets, mountPath: /secrets}
  containers:
    - name: show
      image: busybox:1.36
      command: [cat, /secrets/password]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts:
        - {name: secrets, mountPath: /secrets, readOnly: true}
  volumes:
    - name: token
      projected:
        sources:
          - serviceAccountToken: {audience: ${AUDIENCE}, expirationSeconds: 3600, path: token}
    - name: ca
      configMap: {name: esi-ca}
    - name: secrets
      emptyDir: {medium: Memory}
EOF
}

say "esi-cli as demo/app fetches db-credentials.password"
fetch_pod app
kubectl -n demo wait --for=jsonpath='{.status.phase}'=Succeeded pod/fetch-app --timeout=120s \
    || { kubectl -n demo logs fetch-app -c esi-cli >&2 || true; die "the fetch Pod did not succeed"; }
got="$(kubectl -n demo logs fetch-app -c show)"
[[ "${got}" == "from-the-fake-store" ]] || die "demo/app read ${got@Q}, not the store's value"
echo "demo/app got the secret from the fake ClusterSecretStore through ESI Federation"

say "esi-cli as demo/intruder is refused"
fetch_pod intruder
for _ in $(seq 1 60); do
    phase="$(kubectl -n demo get pod fetch-intruder -o jsonpath='{.status.initContainerStatuses[0].state.terminated.exitCode}' 2>/dev/null || true)"
    [[ -n "${phase}" ]] && break
    sleep 2
done
[[ "${phase:-}" == "1" ]] || die "demo/intruder's esi-cli did not fail (exit code ${phase:-none})"
kubectl -n demo logs fetch-intruder -c esi-cli | tail -n 3
echo "demo/intruder was refused"

say "status written by the elected leader"
kubectl get authorizations,kubernetesfederations
kubectl -n "${NS}" get lease esi-federation -o jsonpath='{.spec.holderIdentity}{"\n"}' || true

if [[ "${CLEANUP:-0}" == "1" ]]; then
    kind delete cluster --name "${CLUSTER}"
else
    echo
    echo "done; the cluster is still running: kind delete cluster --name ${CLUSTER}"
fi
