"""The acceptance suite's set-up outside QGIS: the zip users get, a fresh profile, the engine packages, Xvfb.

Everything here mirrors what an analyst does before the first click: `make package`, "Install from ZIP"
into a profile that has never seen RS-CLIP, then start the real ``qgis`` application. Nothing of the
developer's machine may leak in: HOME, the RS-CLIP caches and the profiles folder are temporary, the
checkout is not importable (Debian's /usr/bin/qgis runs /usr/bin/python3's site, not the venv's), and
network access through Python is pointed at a closed port.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "rs_clip_plugin"
QGIS_BIN = Path("/usr/bin/qgis")
SYSTEM_PYTHON = Path("/usr/bin/python3")  # the interpreter Debian's QGIS embeds
PROFILE = "acceptance"
# The engine's run-time imports that QGIS's own Python (Debian 12) does not ship.
ENGINE_PACKAGES = ("onnxruntime", "tokenizers", "rasterio")


# -- the zip ---------------------------------------------------------------------------------------------
def build_zip() -> Path:
    """`make package` exactly as the README says (the Makefile's package target, setup included)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run(["make", "-s", "package"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"make package failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # package_plugin.py prints "<path> (N files, K kB)" as its last line.
    lines = [ln for ln in proc.stdout.splitlines() if ".zip" in ln]
    if not lines:
        raise RuntimeError(f"make package printed no zip path:\n{proc.stdout}")
    path = Path(lines[-1].split(" (")[0].strip())
    if not path.is_file():
        raise RuntimeError(f"make package said it wrote {path}, which does not exist")
    return path


# -- Install from ZIP ------------------------------------------------------------------------------------
def _qgis_unzip():
    """QGIS 3.22's own extraction routine (pyplugin_installer/unzip.py; stdlib only, safe to load here)."""
    path = Path("/usr/share/qgis/python/pyplugin_installer/unzip.py")
    spec = importlib.util.spec_from_file_location("_qgis_pyplugin_unzip", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.unzip


def install_from_zip(zip_path: Path, profiles_path: Path, profile: str = PROFILE) -> Path:
    """What QgsPluginInstaller.installFromZipFile does (QGIS 3.22), minus its dialogs.

    1. The plugin name is the folder of the shortest ``*metadata.txt`` in the zip.
    2. ``unzip`` (QGIS's own function) into ``<profile>/python/plugins`` (qgis.utils.home_plugin_path).
    3. ``startPlugin`` and, when that worked, ``[PythonPlugins] <name>=true`` in the profile's QGIS3.ini:
       here the setting is written before the first start, so QGIS starts the plugin at launch exactly as
       it does on every later session after an install.
    Returns the installed plugin folder.
    """
    with zipfile.ZipFile(zip_path) as zf:
        metadata = sorted(f for f in zf.namelist() if f.endswith("metadata.txt"))
    if not metadata:
        raise RuntimeError(f"{zip_path}: not a QGIS plugin zip (no metadata.txt)")
    name = os.path.split(metadata[0])[0]
    profile_dir = profiles_path / "profiles" / profile  # `--profiles-path X` keeps profiles in X/profiles
    plugins_dir = profile_dir / "python" / "plugins"
    plugins_dir.mkdir(parents=True, exist_ok=True)
    _qgis_unzip()(str(zip_path), str(plugins_dir))
    ini = profile_dir / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    # Processing is a core plugin; listing it keeps `processing.runAndLoadResults` available whatever the
    # defaults. UI/... keeps a 3.22 first start from opening anything but the main window.
    ini.write_text(
        "[PythonPlugins]\n"
        f"{name}=true\n"
        "processing=true\n"
        "\n[qgis]\n"
        "checkVersion=false\n"
        "showTips=false\n"
        "\n[Processing]\n"
        "Configuration\\ACTIVATE_GRASS7=false\n"
        "Configuration\\ACTIVATE_SAGA=false\n",
        encoding="utf-8",
    )
    return plugins_dir / name


# -- the engine's packages -------------------------------------------------------------------------------
def _requirement_closure(roots: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform / Python (colorama, tomli, ...)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def system_distributions() -> set[str]:
    """Normalised names of the distributions QGIS's own Python (/usr/bin/python3) already has."""
    code = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] or '' for d in m.distributions()))"
    out = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    return {re.sub(r"[-_.]+", "-", n).lower() for n in out.split() if n}


def engine_packages_folder(dest: Path) -> tuple[Path, list[str]]:
    """A folder of links to onnxruntime, tokenizers, rasterio and what they need, taken from the venv.

    Choice (see the README of this folder's test): the plugin's dependency installer would pip-install these
    into the profile's private folder, but that needs the network (or a folder of wheels we do not have),
    and the installer's layout is being reworked (issue 10, item 12). The honest equivalent that works
    offline: the same packages the unit tests use, made visible to QGIS's interpreter through PYTHONPATH,
    ONLY those that QGIS's Python lacks (numpy, attrs, certifi... stay QGIS's own, as the installer's
    constraints require) and never the checkout itself (the editable install's .pth/finder is not linked).
    Returns the folder and the distributions linked ("name version").
    """
    dest.mkdir(parents=True, exist_ok=True)
    have = system_distributions()
    venv_site = Path(sys.prefix).resolve()
    linked: list[str] = []
    for dist in _requirement_closure(ENGINE_PACKAGES):
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        location = Path(str(dist.locate_file(""))).resolve()
        if key in have or venv_site not in location.parents:
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            if top.endswith(".pth") or top.startswith("__editable__") or top == "__pycache__":
                continue
            src = location / top
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
        linked.append(f"{dist.metadata['Name']} {dist.version}")
    return dest, sorted(linked)


# -- starting QGIS -----------------------------------------------------------------------------------------
def clean_env(base: Path, packages: Path, config: Path) -> dict[str, str]:
    """The environment of a new user's desktop session: nothing of this checkout, venv or cache."""
    home = base / "home"
    runtime = base / "xdg-runtime"
    for d in (home, runtime):
        d.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    closed = "http://127.0.0.1:9"  # discard port: any download attempt fails at once (offline)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "USER": os.environ.get("USER", "analyst"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(runtime),
        "PYTHONPATH": str(packages),
        "PYTHONDONTWRITEBYTECODE": "1",
        "RSCLIP_CACHE": str(base / "rsclip-cache"),
        "RSCLIP_DEFAULT_BUNDLE_HOME": str(base / "rsclip-default-bundle"),
        "RSCLIP_THREADS": "2",
        "RSCLIP_ACCEPTANCE_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
        "http_proxy": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "no_proxy": "",
    }
    return env


def run_qgis(base: Path, profiles: Path, driver: Path, env: dict[str, str], timeout: float) -> dict:
    """Start /usr/bin/qgis under a private Xvfb with the driver; returns rc, stdout/stderr and timing."""
    cmd = [
        "xvfb-run", "-a", "-s", "-screen 0 1600x1000x24 -nolisten tcp",
        str(QGIS_BIN), "--profiles-path", str(profiles), "--profile", PROFILE,
        "--nologo", "--noversioncheck", "--nocustomization", "--code", str(driver),
    ]
    out, err = base / "qgis-stdout.txt", base / "qgis-stderr.txt"
    t0 = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, start_new_session=True)
        try:
            rc: Optional[int] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: xvfb-run, Xvfb and qgis
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    return {
        "rc": rc,
        "seconds": time.monotonic() - t0,
        "stdout": out.read_text(errors="replace"),
        "stderr": err.read_text(errors="replace"),
    }


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def copy_artifacts(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)
