"""Installed model bundles (no GUI): the bundles in the QGIS profile, adding, removing, the default.

Installed bundles are plain bundle directories under ``<profile>/rsclip/bundles/<name>``. Every add goes
through the engine's ``load_bundle`` (file hashes and ONNX inputs checked) in a staging folder and is moved
into place only when it passed, so a bad archive never leaves a half-installed model. Archives are unpacked
with ``bundle.safe_extract`` (no absolute paths, no ``..``, no links; inflated size and ratio capped).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from .engine.atomic import replace_dir, staging_dir
from .engine.bundle import MANIFEST, BundleError, load_bundle, safe_extract, sha256_file

SETTINGS_PREFIX = "rsclip/"
DEFAULT_KEY = SETTINGS_PREFIX + "default_bundle"


def check_sha256(what: object, got: str, expected: str) -> None:
    """Refuse a file whose sha256 is not the one the user gave; the message names the field it was typed in
    (``{sha256}``: the model manager's 'sha256' field, the API's ``sha256`` argument)."""
    if got.lower() != expected.strip().lower():
        raise BundleError(
            f"{what}: its sha256 is {got}, not the {{sha256}} given ({expected.strip()}); the file is corrupt or not "
            "the one you meant: download it again, or check the checksum you copied from the publisher",
            params=("sha256",),
        )


class SettingsStore(Protocol):
    def value(self, key: str, defaultValue: Any = None) -> Any: ...
    def setValue(self, key: str, value: Any) -> None: ...
    def remove(self, key: str) -> None: ...


class MemorySettings:
    """A SettingsStore without QGIS (CLI, tests)."""

    def __init__(self) -> None:
        self._d: dict[str, Any] = {}

    def value(self, key: str, defaultValue: Any = None) -> Any:
        return self._d.get(key, defaultValue)

    def setValue(self, key: str, value: Any) -> None:
        self._d[key] = value

    def remove(self, key: str) -> None:
        self._d.pop(key, None)


def qgis_settings() -> SettingsStore:
    try:
        from qgis.core import QgsSettings
    except ImportError:
        return MemorySettings()
    return QgsSettings()


def default_models_dir() -> Path:
    """``<QGIS profile>/rsclip/bundles`` ($RSCLIP_MODELS overrides)."""
    env = os.environ.get("RSCLIP_MODELS")
    if env:
        return Path(env)
    from .deps import profile_dir

    profile = profile_dir() or (Path.home() / ".local" / "share" / "rsclip")
    return profile / "rsclip" / "bundles"


@dataclass
class InstalledBundle:
    name: str
    path: Path
    modalities: list[str]
    languages: list[str]
    size_bytes: int
    provenance: dict
    is_default: bool = False
    builtin: bool = False

    @property
    def size_text(self) -> str:
        mb = self.size_bytes / 1e6
        return f"{mb:.1f} MB" if mb >= 0.1 else f"{self.size_bytes / 1e3:.0f} kB"

    @property
    def provenance_text(self) -> str:
        p = self.provenance or {}
        for key in ("description", "source", "model", "recipe"):
            if p.get(key):
                return str(p[key])
        return ", ".join(f"{k}={v}" for k, v in list(p.items())[:3])


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    if not cleaned:
        raise BundleError(f"bundle name {name!r} has no usable characters; rename the bundle in its manifest")
    return cleaned


class ModelStore:
    def __init__(self, root: Optional[Path] = None, settings: Optional[SettingsStore] = None) -> None:
        self.root = Path(root) if root else default_models_dir()
        self.settings = settings if settings is not None else qgis_settings()

    # -- listing --------------------------------------------------------------------------------------
    def _describe(self, path: Path, builtin: bool = False) -> InstalledBundle:
        bundle = load_bundle(path, verify=False, check_onnx=False)
        s = bundle.summary()
        return InstalledBundle(
            name=s["name"] if builtin else path.name,
            path=path,
            modalities=[e["modality"] for e in s["encoders"]],
            languages=list(s["languages"]),
            size_bytes=int(s["size_bytes"]),
            provenance=dict(s["provenance"] or {}),
            builtin=builtin,
        )

    def installed(self) -> list[InstalledBundle]:
        """Bundles in the profile, then the embedded default bundle when it has been built."""
        out: list[InstalledBundle] = []
        if self.root.is_dir():
            for p in sorted(self.root.iterdir()):
                if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file():
                    try:
                        out.append(self._describe(p))
                    except BundleError:
                        continue  # a broken folder must not hide the others; `add` refuses to create one
        builtin = self.builtin_path()
        if builtin is not None:
            with contextlib.suppress(BundleError):
                out.append(self._describe(builtin, builtin=True))
        default = self.default_path()
        for b in out:
            b.is_default = default is not None and b.path == default
        return out

    @staticmethod
    def builtin_path() -> Optional[Path]:
        """The engine's embedded default bundle when it exists already (never trains one from the GUI)."""
        try:
            from .engine.default_bundle import default_bundle_path

            p = Path(default_bundle_path(build=False, quiet=True))
        except (ImportError, BundleError, OSError, TypeError):
            return None
        return p if p.exists() else None

    def get(self, name: str) -> InstalledBundle:
        for b in self.installed():
            if b.name == name:
                return b
        raise BundleError(f"no installed bundle named {name!r}; add it in RS-CLIP's model manager first")

    # -- default --------------------------------------------------------------------------------------
    def set_default(self, name: str) -> InstalledBundle:
        b = self.get(name)
        self.settings.setValue(DEFAULT_KEY, str(b.path))
        return b

    def default_path(self) -> Optional[Path]:
        """The chosen default; else the embedded default bundle; else None."""
        chosen = self.settings.value(DEFAULT_KEY, "")
        if chosen and (Path(chosen) / MANIFEST).is_file():
            return Path(chosen)
        return self.builtin_path()

    def resolve(self, spec: Optional[str]) -> Path:
        """A bundle for a job: '' -> the default; an installed name; or a folder / .zip path."""
        if not spec:
            p = self.default_path()
            if p is None:
                raise BundleError(
                    "no model bundle chosen and no default bundle installed: add a bundle in RS-CLIP's model "
                    "manager (a bundle folder, .zip or address), or reinstall the plugin from its zip, which "
                    "ships the demonstration model"
                )
            return p
        if (self.root / spec / MANIFEST).is_file():
            return self.root / spec
        p = Path(spec)
        if p.exists():
            return p
        if os.sep in spec or "/" in spec or spec.lower().endswith(".zip"):
            raise BundleError(f"{spec}: no such bundle folder or .zip; check the path, or give an installed bundle's name")
        return self.get(spec).path

    # -- adding / removing ---------------------------------------------------------------------------
    def _install_from_dir(self, staged: Path, name: Optional[str], overwrite: bool) -> InstalledBundle:
        bundle = load_bundle(staged)  # hashes + ONNX inputs: refuse a broken bundle before it is installed
        target = self.root / _safe_name(name or bundle.manifest.name)
        if target.exists() and not overwrite:
            raise BundleError(f"a bundle named {target.name!r} is installed already; remove it first or choose another name")
        replace_dir(staged, target)
        return self._describe(target)

    def _staging(self) -> Path:
        """A hidden working folder in the store (same file system: installing is a rename); those of killed
        installs are removed (engine.atomic.staging_dir)."""
        return staging_dir(self.root / "install")

    def add_folder(self, folder: Path, name: Optional[str] = None, overwrite: bool = False) -> InstalledBundle:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise BundleError(f"{folder}: no {MANIFEST} inside; choose a bundle folder (rsclip-train export writes one)")
        work = self._staging()
        try:
            staged = work / "bundle"
            # Links are copied as links, so load_bundle refuses one that leaves the bundle instead of the copy
            # silently taking in (and hashing) a file from elsewhere.
            shutil.copytree(folder, staged, symlinks=True)
            return self._install_from_dir(staged, name, overwrite)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def add_zip(
        self, zip_path: Path, name: Optional[str] = None, overwrite: bool = False, sha256: Optional[str] = None
    ) -> InstalledBundle:
        zip_path = Path(zip_path)
        if sha256:
            check_sha256(zip_path, sha256_file(zip_path), sha256)
        work = self._staging()
        try:
            staged = work / "bundle"
            safe_extract(zip_path, staged)
            root = staged
            if not (root / MANIFEST).is_file():
                # Archives made by zipping the folder itself hold one top-level directory.
                subdirs = [p for p in staged.iterdir() if p.is_dir()]
                if len(subdirs) == 1 and (subdirs[0] / MANIFEST).is_file():
                    root = subdirs[0]
                else:
                    raise BundleError(f"{zip_path}: no {MANIFEST} in the archive; it is not a model bundle")
            return self._install_from_dir(root, name, overwrite)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def add_url(
        self,
        url: str,
        sha256: Optional[str] = None,
        name: Optional[str] = None,
        overwrite: bool = False,
        on_progress: Optional[Callable[[int, int], None]] = None,
        timeout: float = 60.0,
    ) -> InstalledBundle:
        """Download a bundle .zip, check its sha256 (when given), then install it like ``add_zip``."""
        work = self._staging()
        try:
            dest = work / "download.zip"
            h = hashlib.sha256()
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:
                    total = int(resp.headers.get("Content-Length") or 0)
                    done = 0
                    while chunk := resp.read(1 << 20):
                        f.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if on_progress:
                            on_progress(done, total)
            except OSError as exc:
                raise BundleError(f"{url}: download failed ({exc}); check the address and your connection") from exc
            if sha256:
                check_sha256(url, h.hexdigest(), sha256)
            return self.add_zip(dest, name=name, overwrite=overwrite)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def remove(self, name: str) -> None:
        target = self.root / name
        if not (target / MANIFEST).is_file() or target.resolve().parent != self.root.resolve():
            raise BundleError(f"no installed bundle named {name!r} in {self.root}; nothing removed")
        if self.settings.value(DEFAULT_KEY, "") == str(target):
            self.settings.remove(DEFAULT_KEY)
        trash = target.with_name(f".{target.name}.removing")
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
