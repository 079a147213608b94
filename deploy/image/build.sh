#!/usr/bin/env bash
# Builds the one invmesh image (deploy/image/Containerfile) with podman, from nothing but this
# checkout: `make image` runs it. On a machine with no Docker engine and no registry for base
# images it installs Debian's podman, runc and mmdebstrap when they are missing (as root), makes
# the base image locally, builds the dependency wheels on the host and builds without network.
#
#   BASE_IMAGE  the base (default localhost/debian-python:bookworm, made here when missing;
#               any other name, such as docker.io/library/python:3.11-slim-bookworm, is pulled)
#   IMAGE       the tag (default localhost/invmesh:<version of pyproject.toml>; :latest is added)
#   PYTHON      the Python that builds the wheels (default .venv/bin/python); must be the
#               image's minor version, 3.11
set -euo pipefail
cd "$(dirname "$0")/../.."

LOCAL_BASE=localhost/debian-python:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=build/wheels
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=${IMAGE:-localhost/invmesh:$VERSION}
# crun fails here ("cgroups in hybrid mode not supported"); runc with cgroupfs works. Without
# the ulimits the runtime cannot apply podman's default limits (setrlimit: not permitted).
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

say() { printf 'image: %s\n' "$*" >&2; }

install_tools() {
    local missing=()
    for tool in podman runc mmdebstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" != 0 ]; then
        say "missing ${missing[*]}: run as root, or: sudo apt-get install podman runc mmdebstrap"
        exit 1
    fi
    say "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
}

make_base() {
    if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
        return
    fi
    if [ "$BASE_IMAGE" != "$LOCAL_BASE" ]; then
        "${PODMAN[@]}" pull "$BASE_IMAGE"
        return
    fi
    say "making $LOCAL_BASE with mmdebstrap"
    local start=$SECONDS
    base_folder=$(mktemp -d)
    trap 'rm -rf "$base_folder"' EXIT
    # /usr merged by mmdebstrap's hook rather than by the usrmerge package, which would bring
    # perl (50 MB); no documentation, manual pages or translations, but the copyright files.
    mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$base_folder/base.tar"
    "${PODMAN[@]}" import "$base_folder/base.tar" "$LOCAL_BASE" >/dev/null
    say "made $LOCAL_BASE in $((SECONDS - start)) s"
}

# The project's dependencies (and its build backend, for the build inside the image) as wheels
# for Python 3.11, resolved once and kept in build/wheels: built again only when the list in
# pyproject.toml changes. Their extensions are stripped of debug information.
build_wheels() {
    local wanted
    wanted=$("$PYTHON" - <<'PY'
import sys
import tomllib

if sys.version_info[:2] != (3, 11):
    sys.exit(f"the image runs Python 3.11; wheels from Python {sys.version.split()[0]} would not fit")
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join([*project["build-system"]["requires"], *project["project"]["dependencies"]]))
PY
)
    mkdir -p "$WHEELS"
    if [ -f "$WHEELS/requirements.txt" ] && [ "$(cat "$WHEELS/requirements.txt")" = "$wanted" ]; then
        return
    fi
    say "building the dependency wheels into $WHEELS"
    local start=$SECONDS
    printf '%s\n' "$wanted" >"$WHEELS/requirements.in"
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS" -r "$WHEELS/requirements.in"
    if command -v strip >/dev/null; then
        "$PYTHON" deploy/image/strip_wheels.py "$WHEELS"/*.whl
    else
        say "no strip (binutils): the extensions keep their debug information, some 50 MB"
    fi
    mv "$WHEELS/requirements.in" "$WHEELS/requirements.txt"
    say "built the wheels in $((SECONDS - start)) s"
}

install_tools
make_base
build_wheels
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
source=$(git remote get-url origin 2>/dev/null || echo unknown)
say "building $IMAGE on $BASE_IMAGE"
start=$SECONDS
"${PODMAN[@]}" build "${ULIMITS[@]}" --network none \
    --file deploy/image/Containerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=$source" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --tag "$IMAGE" --tag "${IMAGE%:*}:latest" \
    .
say "built $IMAGE in $((SECONDS - start)) s: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE") bytes"
