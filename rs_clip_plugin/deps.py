"""Which engine packages QGIS's Python lacks, and how to install them without touching QGIS's own.

Learnt from Deepness and Geo-SAM: packages go into a plugin-private folder of the QGIS profile
(``pip install --target``), never into QGIS's interpreter, and a constraints file frozen from every
distribution QGIS's Python already has keeps pip from pulling in a different numpy (or anything else QGIS
links against). The private folder is *appended* to ``sys.path`` so QGIS's copies always win.

No Qt here: the dialog (``gui/deps_dialog.py``) runs the command this module builds in a QProcess.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .engine.atomic import atomic_write_text  # stdlib only: safe before the engine packages are installed

PRIVATE_DIR_NAME = "rsclip-packages"


@dataclass(frozen=True)
class Requirement:
    module: str  # what `import` needs
    pip: str  # what pip installs
    why: str
    minimum: Optional[str] = None  # oldest version the engine works with
    below: Optional[str] = None  # first version it does not (numpy 2 breaks QGIS's GDAL bindings)
    dists: tuple[str, ...] = ()  # distributions that provide the module (default: the module's name)

    def versions(self) -> list[tuple[str, str]]:
        """(distribution, version) of each installed distribution that provides the module."""
        out = []
        for name in self.dists or (self.module,):
            try:
                out.append((name, importlib.metadata.version(name)))
            except importlib.metadata.PackageNotFoundError:
                continue
        return out

    def problem(self) -> Optional[str]:
        """Why the installed copy does not do (missing, too old, too new), or None when it does."""
        if importlib.util.find_spec(self.module) is None:
            return "missing"
        found = self.versions()
        if not found:
            return None  # importable without metadata (a system build): trust it
        dist, version = found[0]
        if self.minimum and _release(version) < _release(self.minimum):
            return f"{dist} {version} is too old (RS-CLIP needs >= {self.minimum})"
        if self.below and _release(version) >= _release(self.below):
            return f"{dist} {version} is too new (RS-CLIP needs < {self.below})"
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version ('1.16.3' -> (1, 16, 3); '2.0rc1' -> (2, 0))."""
    parts = []
    for piece in version.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


# What the engine imports at run time (pyproject's [project].dependencies; numpy is QGIS's own).
ENGINE_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("numpy", "numpy<2", "arrays (QGIS ships it)", minimum="1.21", below="2"),
    Requirement("onnxruntime", "onnxruntime>=1.16", "runs the encoders", minimum="1.16",
                dists=("onnxruntime", "onnxruntime-gpu")),
    Requirement("tokenizers", "tokenizers>=0.15", "turns class names and queries into tokens", minimum="0.15"),
    Requirement("rasterio", "rasterio>=1.3", "reads rasters in windows", minimum="1.3"),
    Requirement("affine", "affine<3", "raster geotransforms", below="3"),
)


def missing_packages(requirements: tuple[Requirement, ...] = ENGINE_REQUIREMENTS) -> list[Requirement]:
    """Requirements whose module cannot be found, or whose installed version does not do (nothing is imported)."""
    importlib.invalidate_caches()
    return [r for r in requirements if r.problem() is not None]


def problems(requirements: tuple[Requirement, ...] = ENGINE_REQUIREMENTS) -> list[tuple[Requirement, str]]:
    importlib.invalidate_caches()
    return [(r, p) for r in requirements if (p := r.problem()) is not None]


def shadowed(requirements: list[Requirement]) -> list[str]:
    """Too-old or too-new copies that QGIS's Python imports before the private folder (which is appended to
    sys.path, so QGIS's own packages always win): installing there cannot fix them. Says what to do."""
    out = []
    for r in requirements:
        p = r.problem()
        if p and p != "missing":
            spec = importlib.util.find_spec(r.module)
            where = Path(spec.origin).parent.parent if spec and spec.origin else "QGIS's Python"
            out.append(f"{p}, installed in {where}: upgrade it there (your system's package manager or the "
                       f"OSGeo4W shell: {r.pip}), then restart QGIS")
    return out


def gdal_status() -> str:
    """Which GDAL reads rasters in this process: QGIS's, and rasterio's when it brought its own copy."""
    parts = []
    try:
        from osgeo import gdal

        parts.append(f"QGIS's GDAL {gdal.__version__}")
    except ImportError:
        pass
    try:
        import rasterio

        rio = getattr(rasterio, "__gdal_version__", "?")
        own = bool(parts) and not parts[0].endswith(rio)
        parts.append(f"rasterio {rasterio.__version__} on GDAL {rio}"
                     + (" (its own copy: a second GDAL in QGIS's process)" if own else " (the same GDAL)"))
    except Exception:  # rasterio missing or broken: the missing list says so
        pass
    return "; ".join(parts) or "GDAL not found"


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded: then onnxruntime-gpu can use CUDA."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def onnxruntime_package(gpu: Optional[bool] = None) -> str:
    """``onnxruntime-gpu`` where an NVIDIA GPU is found, ``onnxruntime`` otherwise."""
    gpu = has_nvidia_gpu() if gpu is None else gpu
    return "onnxruntime-gpu>=1.16" if gpu else "onnxruntime>=1.16"


def profile_dir() -> Optional[Path]:
    """The active QGIS profile folder, or None outside QGIS."""
    try:
        from qgis.core import QgsApplication
    except ImportError:
        return None
    path = QgsApplication.qgisSettingsDirPath()
    return Path(path) if path else None


def private_site_dir(profile: Optional[Path] = None) -> Path:
    """``<profile>/python/rsclip-packages/py311``: one folder per Python version, since compiled packages
    (onnxruntime, tokenizers, rasterio) only load in the Python they were built for and a QGIS upgrade can
    change the Python. $RSCLIP_PACKAGES overrides (tests)."""
    env = os.environ.get("RSCLIP_PACKAGES")
    if env:
        return Path(env)
    profile = profile or profile_dir()
    if profile is None:
        profile = Path.home() / ".local" / "share" / "rsclip"
    return Path(profile) / "python" / PRIVATE_DIR_NAME / f"py{sys.version_info.major}{sys.version_info.minor}"


def activate_private_site(path: Optional[Path] = None) -> Optional[Path]:
    """Append the private folder to sys.path (last: QGIS's own packages keep priority)."""
    path = path or private_site_dir()
    if not path.is_dir():
        return None
    if str(path) not in sys.path:
        sys.path.append(str(path))
        importlib.invalidate_caches()
    return path


_PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[A-Za-z0-9.]+)?$")


def frozen_constraints(exclude: Optional[Path] = None) -> list[str]:
    """``name==version`` for every distribution this Python already has (outside ``exclude``).

    pip then may add packages but never replace one QGIS uses. Versions pip cannot parse (some distro
    builds) are left out rather than breaking the install.
    """
    seen: dict[str, str] = {}
    excluded = str(Path(exclude).resolve()) if exclude else None
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        version = dist.version
        if not name or not version or not _PEP440.match(version):
            continue
        location = str(getattr(dist, "_path", ""))
        if excluded and location.startswith(excluded):
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        seen.setdefault(key, f"{key}=={version}")
    return sorted(seen.values())


def write_constraints(path: Path, exclude: Optional[Path] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Frozen from QGIS's Python by RS-CLIP: pip must not replace any of these.\n"
    atomic_write_text(path, header + "\n".join(frozen_constraints(exclude)) + "\n")
    return path


def _is_this_python(exe: Path) -> bool:
    """Whether ``exe`` is the interpreter running QGIS: it must live in this Python's own prefix. A pyenv
    shim or a virtualenv's python on PATH is another interpreter, and pip would install for it."""
    try:
        real = exe.resolve()
    except OSError:
        return False
    if not real.is_file() or not real.name.lower().startswith("python"):
        return False
    prefixes = {Path(p).resolve() for p in (sys.exec_prefix, sys.base_exec_prefix, sys.prefix, sys.base_prefix)}
    return any(real.is_relative_to(p) for p in prefixes)


def python_executable() -> str:
    """The interpreter QGIS embeds (for ``python -m pip``). Inside QGIS ``sys.executable`` can be the qgis
    binary itself, or whatever ``python3`` comes first on PATH (a pyenv shim): both are checked against this
    Python's prefix, and the versioned binary in that prefix is used otherwise."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable)]
    for prefix in dict.fromkeys((sys.exec_prefix, sys.base_exec_prefix)):
        candidates += [Path(prefix) / "bin" / f"python{v}", Path(prefix) / "bin" / "python3",
                       Path(prefix) / "python.exe", Path(prefix) / "python3.exe"]
    for exe in candidates:
        if _is_this_python(exe):
            return str(exe)
    raise RuntimeError(
        f"cannot find the Python {v} interpreter QGIS runs (looked in {sys.exec_prefix}); install the packages "
        "with your system's package manager or the OSGeo4W shell instead"
    )


def pip_install_command(
    missing: list[Requirement], target: Path, constraints: Path, gpu: Optional[bool] = None,
    wheels: Optional[Path] = None,
) -> list[str]:
    """The pip command line (program first) that installs ``missing`` into ``target``; with ``wheels``, from
    that folder of wheel files only (offline machines: download them elsewhere with ``pip download``)."""
    specs = [onnxruntime_package(gpu) if r.module == "onnxruntime" else r.pip for r in missing]
    offline = ["--no-index", "--find-links", str(wheels)] if wheels is not None else []
    return [
        python_executable(),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--upgrade",
        *offline,
        "--target",
        str(target),
        "-c",
        str(constraints),
        *specs,
    ]


def describe(missing: list[Requirement]) -> str:
    if not missing:
        return "All engine packages are available."
    words = []
    for r in missing:
        p = r.problem() or "missing"
        words.append(f"{r.module} ({r.why})" if p == "missing" else p)
    return "Python packages to install or update: " + ", ".join(words)


def system_package_hint(missing: list[Requirement]) -> Optional[str]:
    """On Debian/Ubuntu the system's rasterio uses QGIS's own GDAL; pip's wheel brings a second one."""
    if any(r.module == "rasterio" for r in missing) and shutil.which("dpkg"):
        return ("Prefer your system's rasterio, which uses QGIS's own GDAL: sudo apt install python3-rasterio "
                "(pip's rasterio wheel brings a second GDAL into QGIS's process)")
    return None
