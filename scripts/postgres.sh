#!/usr/bin/env bash
# Starts/stops a throw-away PostgreSQL on loopback for the generator tests (OpenBao's
# database secrets engine issues login roles in it).
#
#   scripts/postgres.sh start   # install if needed, initdb, start, write target/test-backends/postgres.env
#   scripts/postgres.sh stop    # stop it and remove its data directory
#
# The cluster lives in a fresh temporary directory owned by the user the server runs as
# (initdb refuses root, so as root it runs as `postgres`, created by the Debian package).
# The superuser `esi` authenticates with a random password (scram-sha-256), also over
# loopback TCP. Only Debian's packages are used (apt-get install postgresql, openssl) when
# absent.
#
# The server also speaks TLS (ssl=on; plain connections stay allowed) with a certificate
# for localhost and 127.0.0.1 from a throw-away CA made here with openssl, which also
# issues a client certificate (CN=esi-ledger-test; the server checks presented client
# certificates against that CA). The ledger's TLS tests read ESI_TEST_PG_CA,
# ESI_TEST_PG_CLIENT_CERT and ESI_TEST_PG_CLIENT_KEY (files under target/test-backends).
set -euo pipefail

NAME="postgres.sh"
LOG_NAME="postgres-setup.log"
# shellcheck source=scripts/lib/backend.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/backend.sh"
ENV_FILE="${OUT}/postgres.env"
STATE_FILE="${OUT}/postgres.state"

# Prints the newest PostgreSQL server bin directory, installing the package when absent.
find_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -z "${dir}" || ! -x "${dir}/initdb" ]]; then
        [[ "$(id -u)" -eq 0 ]] || die "PostgreSQL is not installed and installing it needs root"
        command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is missing"
        {
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-client
        } >>"${LOG}" 2>&1 || die "apt-get install postgresql failed"
        dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
    [[ -n "${dir}" && -x "${dir}/initdb" && -x "${dir}/pg_ctl" ]] || die "initdb/pg_ctl not found"
    echo "${dir}"
}

# Installs a Debian package when its command is absent.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ "$(id -u)" -eq 0 ]] || die "$1 is not installed and installing it needs root"
    {
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2"
    } >>"${LOG}" 2>&1 || die "apt-get install $2 failed"
}

# Makes the test CA (into $1, for the tests), the server's certificate and key (into $2,
# for the server) and a client certificate: EC P-256, valid two days.
make_tls() {
    local out="$1" server="$2" ext
    need openssl openssl
    mkdir -p "${out}"
    ext="$(mktemp)"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=esi test PostgreSQL CA" -keyout "${out}/ca.key" -out "${out}/ca.crt" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=localhost" -keyout "${server}/server.key" -out "${out}/server.csr"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"${ext}"
        openssl x509 -req -in "${out}/server.csr" -CA "${out}/ca.crt" -CAkey "${out}/ca.key" \
            -set_serial "0x$(random_hex)" -days 2 -extfile "${ext}" -out "${server}/server.crt"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=esi-ledger-test" -keyout "${out}/client.key" -out "${out}/client.csr"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=clientAuth" >"${ext}"
        openssl x509 -req -in "${out}/client.csr" -CA "${out}/ca.crt" -CAkey "${out}/ca.key" \
            -set_serial "0x$(random_hex)" -days 2 -extfile "${ext}" -out "${out}/client.crt"
    } >>"${LOG}" 2>&1 || { rm -f "${ext}"; die "openssl could not make the test certificates"; }
    rm -f "${ext}" "${out}/server.csr" "${out}/client.csr" "${out}/ca.key"
    cp "${out}/ca.crt" "${server}/ca.crt"
    chmod 600 "${server}/server.key" "${out}/client.key"
}

# Runs a command as the cluster's owner (root cannot run PostgreSQL).
as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

read_state() {
    [[ -f "${STATE_FILE}" ]] || return 1
    # shellcheck disable=SC1090
    . "${STATE_FILE}"
}

start() {
    mkdir -p "${OUT}"
    if read_state && [[ -n "${PGDATA_DIR:-}" ]] && [[ -f "${ENV_FILE}" ]] \
        && as_owner "${BINDIR}/pg_ctl" -D "${PGDATA_DIR}" status >/dev/null 2>&1; then
        return 0
    fi
    stop
    : >"${LOG}"

    local bindir port password base data pwfile
    bindir="$(find_bindir)"
    if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres \
            >>"${LOG}" 2>&1 || die "cannot create the postgres user"
    fi
    port="$(free_port)"
    password="esi-$(random_hex)"
    base="$(mktemp -d /tmp/esi-postgres.XXXXXX)"
    data="${base}/data"
    pwfile="${base}/pw"
    printf '%s\n' "${password}" >"${pwfile}"
    make_tls "${OUT}/postgres-tls" "${base}"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown -R postgres: "${base}"
    fi
    chmod 700 "${base}"
    cat >"${STATE_FILE}" <<EOF
BINDIR=${bindir}
PGDATA_DIR=${data}
PGBASE_DIR=${base}
EOF

    as_owner "${bindir}/initdb" -D "${data}" -U esi --pwfile="${pwfile}" \
        --auth=scram-sha-256 --encoding=UTF8 --no-instructions >>"${LOG}" 2>&1 \
        || die "initdb failed"
    rm -f "${pwfile}"
    as_owner "${bindir}/pg_ctl" -D "${data}" -l "${base}/server.log" -w -t 30 \
        -o "-p ${port} -k ${base} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=${base}/server.crt -c ssl_key_file=${base}/server.key -c ssl_ca_file=${base}/ca.crt" start >>"${LOG}" 2>&1 \
        || { cat "${base}/server.log" >>"${LOG}" 2>/dev/null || true; die "pg_ctl start failed"; }

    local psql="${bindir}/psql"
    [[ -x "${psql}" ]] || psql="$(command -v psql || true)"
    [[ -n "${psql}" ]] || die "psql not found"
    PGPASSWORD="${password}" "${psql}" -h 127.0.0.1 -p "${port}" -U esi -d postgres \
        -tAc 'select 1' >>"${LOG}" 2>&1 || die "cannot log in to the new PostgreSQL"

    umask 077
    cat >"${ENV_FILE}" <<EOF
export ESI_TEST_PG_HOST=127.0.0.1
export ESI_TEST_PG_PORT=${port}
export ESI_TEST_PG_USER=esi
export ESI_TEST_PG_PASSWORD=${password}
export ESI_TEST_PG_DATABASE=postgres
export ESI_TEST_PSQL=${psql}
export ESI_TEST_PG_CA=${OUT}/postgres-tls/ca.crt
export ESI_TEST_PG_CLIENT_CERT=${OUT}/postgres-tls/client.crt
export ESI_TEST_PG_CLIENT_KEY=${OUT}/postgres-tls/client.key
EOF
}

stop() {
    if read_state && [[ -n "${PGDATA_DIR:-}" ]]; then
        if [[ -d "${PGDATA_DIR}" ]]; then
            as_owner "${BINDIR}/pg_ctl" -D "${PGDATA_DIR}" -m fast -w -t 30 stop >/dev/null 2>&1 || true
        fi
        case "${PGBASE_DIR:-}" in
            /tmp/esi-postgres.*) rm -rf "${PGBASE_DIR}" ;;
        esac
    fi
    rm -rf "${STATE_FILE}" "${ENV_FILE}" "${OUT}/postgres-tls"
}

backend_main "$@"
