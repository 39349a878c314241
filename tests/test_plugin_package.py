"""`make package`: the plugin zip holds what QGIS needs and nothing else."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_zip_contents(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "package_plugin.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    zips = list(tmp_path.glob("rs_clip_plugin-*.zip"))
    assert [z.name for z in zips] == ["rs_clip_plugin-0.1.0.zip"]
    with zipfile.ZipFile(zips[0]) as zf:
        names = zf.namelist()
        cp = configparser.ConfigParser()
        cp.read_string(zf.read("rs_clip_plugin/metadata.txt").decode())
    assert all(n.startswith("rs_clip_plugin/") for n in names)
    for needed in ("metadata.txt", "__init__.py", "plugin.py", "resources/icon.png", "engine/classify.py",
                   "processing/provider.py", "gui/search_dock.py", "resources/classnames/eurosat.json",
                   "resources/classnames/bigearthnet19.json"):
        assert f"rs_clip_plugin/{needed}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n or n.endswith(".tif")]
    g = cp["general"]
    assert g["qgisMinimumVersion"] == "3.22" and g["hasProcessingProvider"] == "yes" and g["version"] == "0.1.0"
    assert f"rs_clip_plugin/{g['icon']}" in names


def test_installed_zip_layout_finds_resources(tmp_path: Path) -> None:
    """Unpacked like QGIS does, the plugin finds its icon and presets inside its own folder."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "package_plugin.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    with zipfile.ZipFile(next(tmp_path.glob("*.zip"))) as zf:
        zf.extractall(tmp_path / "plugins")
    code = ("from rs_clip_plugin.presets import icon_path, preset_classes; print(icon_path()); "
            "print(preset_classes('EuroSAT', 'de')[1])")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'plugins')!r}); {code}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    icon, forest = out.stdout.splitlines()
    assert icon.startswith(str(tmp_path / "plugins" / "rs_clip_plugin" / "resources"))
    assert forest == "Wald"
