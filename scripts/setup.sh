#!/usr/bin/env bash
# One idempotent set-up for `make demo` and `make test` on a fresh Debian (bookworm) machine:
# Debian's QGIS 3.22, a venv that sees it, and this project installed editable with pins that keep
# QGIS's own numpy/GDAL working. A second run on a set-up machine returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
APT_PACKAGES=(python3-qgis qgis-providers qgis xvfb python3-venv python3-pip)
EXTRAS=${RSCLIP_EXTRAS:-train,dev,archive}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt_line="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        bash -c "$apt_line" >/tmp/rsclip-apt.log 2>&1 || { tail -20 /tmp/rsclip-apt.log; echo "setup: apt-get failed (log: /tmp/rsclip-apt.log)"; exit 1; }
    else
        echo "setup: these Debian packages are missing: ${missing[*]}"
        echo "setup: run as root:  sudo bash -c '$apt_line'"
        exit 1
    fi
fi

if [[ ! -x $VENV/bin/python ]]; then
    echo "setup: creating $VENV (system site packages, so it sees QGIS)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Reinstall only when what decides the install changed.
stamp=$VENV/.rsclip-setup
want=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS-$(pwd)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi
echo "setup: installing the project and its extras [$EXTRAS] into $VENV (first time: several minutes, torch is large)"
t0=$(date +%s)
log=$(mktemp)
rc=0
# Debian's own pip (23.0) is enough; upgrading it mid-install has broken installs here before.
"$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[$EXTRAS]" >"$log" 2>&1 || rc=$?
# This machine's pip configuration names local mirrors that lack most packages: drop that noise.
grep -vE "^WARNING: Location|^\[notice\]" "$log" | tail -40 || true
rm -f "$log"
[[ $rc -eq 0 ]] || { echo "setup: pip install failed (exit $rc)"; exit 1; }
"$VENV/bin/python" - <<'PY'
import numpy, affine
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__} would break Debian's GDAL and QGIS"
from osgeo import gdal_array  # noqa: F401  (fails when numpy 2 slipped in)
import qgis.core  # noqa: F401
PY
echo "$want" >"$stamp"
echo "setup: done in $(( $(date +%s) - t0 )) s"
