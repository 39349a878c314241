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


# What the engine imports at run time (pyproject's [project].dependencies; numpy is QGIS's own).
ENGINE_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("numpy", "numpy<2", "arrays (QGIS ships it)"),
    Requirement("onnxruntime", "onnxruntime>=1.16", "runs the encoders"),
    Requirement("tokenizers", "tokenizers>=0.15", "turns class names and queries into tokens"),
    Requirement("rasterio", "rasterio>=1.3", "reads rasters in windows"),
    Requirement("affine", "affine<3", "raster geotransforms"),
)


def missing_packages(requirements: tuple[Requirement, ...] = ENGINE_REQUIREMENTS) -> list[Requirement]:
    """Requirements whose module cannot be found by this interpreter (nothing is imported)."""
    importlib.invalidate_caches()
    return [r for r in requirements if importlib.util.find_spec(r.module) is None]


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
    """``<profile>/python/rsclip-packages`` ($RSCLIP_PACKAGES overrides, e.g. for tests)."""
    env = os.environ.get("RSCLIP_PACKAGES")
    if env:
        return Path(env)
    profile = profile or profile_dir()
    if profile is None:
        profile = Path.home() / ".local" / "share" / "rsclip"
    return Path(profile) / "python" / PRIVATE_DIR_NAME


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


def python_executable() -> str:
    """The interpreter QGIS embeds. Inside QGIS ``sys.executable`` can be the qgis binary itself."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python"):
        return str(exe)
    for candidate in (
        Path(sys.exec_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}",
        Path(sys.exec_prefix) / "bin" / "python3",
        Path(sys.exec_prefix) / "python.exe",
        Path(sys.exec_prefix) / "python3.exe",
    ):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("python3") or "python3"


def pip_install_command(
    missing: list[Requirement], target: Path, constraints: Path, gpu: Optional[bool] = None
) -> list[str]:
    """The pip command line (program first) that installs ``missing`` into ``target``."""
    specs = [onnxruntime_package(gpu) if r.module == "onnxruntime" else r.pip for r in missing]
    return [
        python_executable(),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--upgrade",
        "--target",
        str(target),
        "-c",
        str(constraints),
        *specs,
    ]


def describe(missing: list[Requirement]) -> str:
    if not missing:
        return "All engine packages are available."
    return "Missing Python packages: " + ", ".join(f"{r.module} ({r.why})" for r in missing)
