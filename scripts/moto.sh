#!/usr/bin/env bash
# Starts/stops a throw-away moto server (AWS API mock) on loopback for the STS and ECR
# generator tests and the aws store provider's tests (Secrets Manager, Parameter Store),
# with request signing enforced.
#
#   scripts/moto.sh start   # install if needed, start, create an IAM user and key, write target/test-backends/moto.env
#   scripts/moto.sh stop    # stop it
#
# moto checks SigV4 signatures and IAM policies only after its first
# INITIAL_NO_AUTH_ACTION_COUNT actions: exactly that many setup calls (create a user,
# give it a policy, create its access key, and a role it may assume) run unchecked, and every later call must be
# signed with that key, so a wrong signature fails (tests create their secrets and
# parameters with that key: the user's policy allows it). moto comes from PyPI (pinned), into a
# virtualenv under target/test-backends when the one on PATH is missing or another version.
set -euo pipefail

MOTO_VERSION="5.2.5"
# CreateUser, PutUserPolicy, CreateAccessKey, CreateRole, PutRolePolicy.
SETUP_ACTIONS=5
REGION="us-east-1"

NAME="moto.sh"
LOG_NAME="moto-setup.log"
# shellcheck source=scripts/lib/backend.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/backend.sh"
ENV_FILE="${OUT}/moto.env"
STATE_FILE="${OUT}/moto.state"
VENV="${OUT}/moto-venv"

# The version of moto a Python interpreter imports (empty when none).
moto_version_of() {
    "$1" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

# Prints the Python interpreter that has the pinned moto with its server extras.
find_python() {
    local py
    py="$(command -v python3 || true)"
    [[ -n "${py}" ]] || die "python3 is required"
    if command -v moto_server >/dev/null 2>&1 \
        && [[ "$(moto_version_of "${py}")" == "${MOTO_VERSION}" ]] \
        && "${py}" -c 'import flask, flask_cors, yaml, boto3' >/dev/null 2>&1; then
        echo "${py}"
        return
    fi
    if [[ ! -x "${VENV}/bin/python" || "$(moto_version_of "${VENV}/bin/python")" != "${MOTO_VERSION}" ]]; then
        {
            rm -rf "${VENV}"
            "${py}" -m venv "${VENV}"
            "${VENV}/bin/python" -m pip install -q --disable-pip-version-check \
                "moto[server]==${MOTO_VERSION}" flask flask-cors pyyaml
        } >>"${LOG}" 2>&1 || die "pip install moto[server]==${MOTO_VERSION} failed"
    fi
    echo "${VENV}/bin/python"
}

read_state() {
    [[ -f "${STATE_FILE}" ]] || return 1
    # shellcheck disable=SC1090
    . "${STATE_FILE}"
}

start() {
    mkdir -p "${OUT}"
    if read_state && [[ -n "${MOTO_PID:-}" ]] && [[ -f "${ENV_FILE}" ]] \
        && kill -0 "${MOTO_PID}" 2>/dev/null; then
        return 0
    fi
    stop
    : >"${LOG}"

    local py port endpoint pid
    py="$(find_python)"
    port="$(free_port)"
    endpoint="http://127.0.0.1:${port}"
    INITIAL_NO_AUTH_ACTION_COUNT="${SETUP_ACTIONS}" MOTO_ALLOW_NONEXISTENT_REGION=false \
        setsid "${py}" -c 'import sys; from moto.server import main; sys.exit(main())' \
        -H 127.0.0.1 -p "${port}" >"${OUT}/moto-server.log" 2>&1 &
    pid=$!
    echo "MOTO_PID=${pid}" >"${STATE_FILE}"

    local ready=""
    for _ in $(seq 1 100); do
        kill -0 "${pid}" 2>/dev/null || { cat "${OUT}/moto-server.log" >>"${LOG}" 2>/dev/null || true; die "moto server exited"; }
        if "${py}" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1)' \
            "${endpoint}" >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.2
    done
    [[ -n "${ready}" ]] || die "moto server did not come up on ${endpoint}"

    # The setup calls: the first SETUP_ACTIONS actions are not checked, so any key signs them.
    local creds
    creds="$("${py}" - "${endpoint}" "${REGION}" <<'PY' 2>>"${LOG}"
import json, sys
import boto3
endpoint, region = sys.argv[1], sys.argv[2]
iam = boto3.client("iam", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="esi-test")
iam.put_user_policy(UserName="esi-test", PolicyName="esi-test-all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["sts:*", "ecr:*", "ecr-public:*", "iam:*", "secretsmanager:*", "ssm:*"], "Resource": "*"}],
}))
key = iam.create_access_key(UserName="esi-test")["AccessKey"]
role = iam.create_role(RoleName="esi-test-role", AssumeRolePolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
}))["Role"]
iam.put_role_policy(RoleName="esi-test-role", PolicyName="esi-test-role-all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["sts:*", "ecr:*", "secretsmanager:*", "ssm:*"], "Resource": "*"}],
}))
print(key["AccessKeyId"], key["SecretAccessKey"], role["Arn"])
PY
)" || die "creating the IAM user and access key failed"
    local key_id secret role_arn
    read -r key_id secret role_arn <<<"${creds}"
    [[ -n "${key_id}" && -n "${secret}" && -n "${role_arn}" ]] || die "no access key or role was created"

    # From now on every action must be signed with a known key: reset moto's counter to 0
    # (its own admin endpoint), then prove it by a call signed with a wrong key.
    "${py}" -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}), timeout=5)' \
        "${endpoint}" >>"${LOG}" 2>&1 || die "cannot switch moto's signature checks on"
    "${py}" - "${endpoint}" "${REGION}" "${key_id}" <<'PY' >>"${LOG}" 2>&1 || die "moto accepted a wrongly signed call: signature checks are off"
import sys
import boto3, botocore.exceptions
endpoint, region, key_id = sys.argv[1:4]
sts = boto3.client("sts", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id=key_id, aws_secret_access_key="wrong-secret")
try:
    sts.get_caller_identity()
except botocore.exceptions.ClientError:
    sys.exit(0)
sys.exit(1)
PY

    umask 077
    cat >"${ENV_FILE}" <<EOF
export ESI_TEST_MOTO_ENDPOINT=${endpoint}
export ESI_TEST_MOTO_REGION=${REGION}
export ESI_TEST_MOTO_ACCESS_KEY_ID=${key_id}
export ESI_TEST_MOTO_SECRET_ACCESS_KEY=${secret}
export ESI_TEST_MOTO_ROLE_ARN=${role_arn}
EOF
}

stop() {
    if read_state && [[ -n "${MOTO_PID:-}" ]]; then
        # setsid made it a process group leader: end the group it leads, nothing else.
        kill -- "-${MOTO_PID}" 2>/dev/null || kill "${MOTO_PID}" 2>/dev/null || true
    fi
    rm -f "${STATE_FILE}" "${ENV_FILE}"
}

backend_main "$@"
