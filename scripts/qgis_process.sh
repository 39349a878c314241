#!/usr/bin/env bash
# qgis_process with the RS-CLIP plugin from this checkout and the packages of its venv.
#
#   scripts/qgis_process.sh run rsclip:classify -- INPUT=scene.tif CLASSES="forest;water" OUTPUT=labels.tif
#   scripts/qgis_process.sh help rsclip:search
#
# It calls /usr/bin/qgis_process.bin directly (Debian's qgis_process wrapper fails with "Command
# --noversioncheck not known!"), uses a QGIS profile of its own (your QGIS settings are not touched) in
# which the plugin is enabled, and lets QGIS find the plugin through QGIS_PLUGINPATH. The bundle defaults
# to the model manager's default or $RSCLIP_BUNDLE; pass BUNDLE=<folder|zip> to choose another.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
QGIS_PROCESS=${QGIS_PROCESS:-/usr/bin/qgis_process.bin}
STATE=${RSCLIP_QGIS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/rsclip/qgis}

[[ -x $QGIS_PROCESS ]] || { echo "qgis_process.sh: $QGIS_PROCESS not found; install Debian's 'qgis' package or set QGIS_PROCESS" >&2; exit 2; }
[[ -x $VENV/bin/python ]] || { echo "qgis_process.sh: no venv at $VENV; run 'make setup' first (or set VENV)" >&2; exit 2; }

# QGIS recognises a plugin as a folder holding __init__.py and metadata.txt; in the checkout metadata.txt
# and resources/ sit at the top level, so a folder of links assembles the plugin as the zip would hold it.
plugin=$STATE/plugins/rs_clip_plugin
rm -rf "$plugin"
mkdir -p "$plugin"
for f in "$REPO"/rs_clip_plugin/*; do
    [[ $(basename "$f") == __pycache__ ]] || ln -s "$f" "$plugin/$(basename "$f")"
done
ln -s "$REPO/metadata.txt" "$plugin/metadata.txt"
ln -s "$REPO/resources" "$plugin/resources"

site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export QGIS_PLUGINPATH=$STATE/plugins
export QGIS_CUSTOM_CONFIG_PATH=$STATE/profile
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$STATE/runtime}
mkdir -p "$QGIS_CUSTOM_CONFIG_PATH" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"

# Enable the plugin in this profile once (qgis_process loads only enabled plugins).
stamp=$STATE/profile/.rsclip-enabled
if [[ ! -f $stamp ]]; then
    "$QGIS_PROCESS" plugins enable rs_clip_plugin >/dev/null 2>&1 || {
        echo "qgis_process.sh: could not enable the plugin; run: $QGIS_PROCESS plugins enable rs_clip_plugin" >&2; exit 2; }
    touch "$stamp"
fi
exec "$QGIS_PROCESS" "$@"
