#!/usr/bin/env bash
# Validates deploy/*.yaml against the Kubernetes API schemas with kubernetes-validate (PyPI),
# which ships the schemas: after the install it runs offline. Strict: unknown fields fail.
# Installs the pinned version into a virtualenv under target/ the first time.
# usage: scripts/validate-manifests.sh [FILES...]   (default: deploy/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.37.0                  # kubernetes-validate
KUBE_VERSIONS=(1.30.0 1.37.0)   # the oldest Kubernetes weft supports, and the newest schemas
venv=target/kubernetes-validate-$VERSION
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 keeps venv in a package of its own.
    rm -rf "$venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION"
fi
files=("$@")
((${#files[@]})) || files=(deploy/*.yaml)

# The validator must catch a mistake: a DaemonSet with a misspelt field fails.
bad=$(mktemp --suffix=.yaml)
trap 'rm -f "$bad"' EXIT
printf 'apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      hostNetwrk: true\n      containers: [{name: x, image: x}]\n' >"$bad"
if "$venv/bin/kubernetes-validate" --strict --quiet -k "${KUBE_VERSIONS[0]}" "$bad" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted a misspelt field: the check is not working" >&2
  exit 1
fi

for v in "${KUBE_VERSIONS[@]}"; do
  "$venv/bin/kubernetes-validate" --strict -k "$v" "${files[@]}"
done
echo "manifests valid against Kubernetes ${KUBE_VERSIONS[*]}"
