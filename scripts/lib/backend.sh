# Shared by scripts/{openbao,postgres,moto}.sh: paths, failure reporting, ports, and the
# start|stop entry point. Source it after setting NAME (the script's name for messages) and
# LOG_NAME (its setup log's file name); it sets ROOT and OUT and defines:
#   die MSG...      print "NAME: MSG" and the setup log's last lines, exit 1
#   free_port       a free loopback TCP port
#   random_hex      32 random hex digits
#   backend_main    dispatch "$1" to the script's own start/stop functions
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${ROOT}/target/test-backends"
LOG="${OUT}/${LOG_NAME:?set LOG_NAME before sourcing backend.sh}"

die() {
    echo "${NAME:?}: $*" >&2
    if [[ -f "${LOG}" ]]; then
        echo "--- last lines of ${LOG} ---" >&2
        tail -n 20 "${LOG}" >&2 || true
    fi
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

random_hex() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

backend_main() {
    case "${1:-}" in
        start) start ;;
        stop) stop ;;
        *)
            echo "usage: ${NAME} start|stop" >&2
            exit 2
            ;;
    esac
}
