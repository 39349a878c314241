"""The embedded default bundle: where it is, and how it gets built the first time.

No pretrained weights can be downloaded where this project is built, so the default bundle is made by
the project itself: the modality-gap smoke recipe (``training/configs/smoke/modality_gap.yaml``) trains
a tiny model on the real samples in ``sample_data_dir()`` and exports text, RGB, Sentinel-2 and
Sentinel-1 encoders. It is built once and cached, keyed by the recipe and the training code, so a
change to either rebuilds it. Its manifest's provenance says exactly what it is and how well it does;
``$RSCLIP_BUNDLE`` (or ``--bundle``) points the engine at a real exported model instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .atomic import staged_dir
from .bundle import MANIFEST, Bundle, BundleError, load_bundle
from .settings import user_cache_root

_REPO = Path(__file__).resolve().parents[2]
RECIPE = _REPO / "training" / "configs" / "smoke" / "modality_gap.yaml"
# `make package` puts the prebuilt default bundle here, inside the plugin folder, so that a plugin installed
# from its zip works offline with no training code and no torch. A checkout has no such folder.
SHIPPED = Path(__file__).resolve().parents[1] / "bundles" / "default"


def default_bundle_home() -> Path:
    """Kept apart from the index cache so that clearing indexes never forces a retrain."""
    env = os.environ.get("RSCLIP_DEFAULT_BUNDLE_HOME")
    return Path(env) if env else user_cache_root() / "default-bundle"


def _recipe_key() -> str:
    """Hash of the recipe and of the training and export code that turn it into a bundle."""
    h = hashlib.sha256()
    h.update(RECIPE.read_bytes())
    for sub in ("training/methods/modality_gap", "training/models", "training/export", "training/data"):
        for p in sorted((_REPO / sub).rglob("*.py")):
            h.update(p.relative_to(_REPO).as_posix().encode())
            h.update(p.read_bytes())
    h.update((_REPO / "rs_clip_plugin" / "engine" / "bundle.py").read_bytes())
    return h.hexdigest()[:16]


def default_bundle_path(build: bool = True, quiet: bool = False) -> Path:
    """Path of the default bundle; builds it (once) when it is missing and ``build`` is true."""
    env = os.environ.get("RSCLIP_BUNDLE")
    if env:
        return Path(env)
    shipped = shipped_bundle_path()
    if shipped is not None:
        return shipped
    return built_default_bundle(build=build, quiet=quiet)


def built_default_bundle(build: bool = True, quiet: bool = False) -> Path:
    """The default bundle built from the recipe in this checkout (once, then cached): what `make package`
    ships. Ignores $RSCLIP_BUNDLE and any shipped copy."""
    if not RECIPE.is_file():
        raise BundleError(
            "no default bundle: this installation ships none and cannot build one (the training recipe is not "
            "installed); add a model bundle (a bundle folder or .zip) or set RSCLIP_BUNDLE"
        )
    target = default_bundle_home() / _recipe_key()
    bundle_dir = target / "bundle"
    if (bundle_dir / MANIFEST).is_file():
        return bundle_dir
    if not build:
        raise BundleError(f"the default bundle has not been built yet (expected at {bundle_dir}); run `rsclip demo` once")
    _build(target, quiet=quiet)
    return bundle_dir


def shipped_bundle_path() -> Path | None:
    """The prebuilt default bundle inside an installed plugin (see ``SHIPPED``), or None in a checkout."""
    return SHIPPED if (SHIPPED / MANIFEST).is_file() else None


def as_bundle(bundle: Bundle | str | os.PathLike | None) -> Bundle:
    """A loaded bundle from a Bundle, a bundle directory or .zip, or None (the embedded default bundle):
    what every engine entry point accepts as ``bundle``."""
    if isinstance(bundle, Bundle):
        return bundle
    return load_bundle(default_bundle_path() if bundle is None else bundle)


def _build(target: Path, quiet: bool) -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise BundleError(
            "the default bundle must be built once with the training extras (torch, open_clip): "
            "`pip install -e .[train]`, or pass --bundle / set RSCLIP_BUNDLE to an exported bundle"
        ) from exc
    # Built beside its final place and swapped in (atomic.py: staged_dir); the folder of a killed build is
    # removed by the next. A bundle another process finished first is the same recipe's: either will do.
    with staged_dir(target, complete=lambda d: (d / "bundle" / MANIFEST).is_file()) as work:
        if not quiet:
            print(
                f"rsclip: building the default bundle once (modality-gap smoke recipe on {RECIPE.name}); "
                f"it is cached in {target}",
                file=sys.stderr,
            )
        cmd = [sys.executable, "-m", "training.cli", "run", str(RECIPE), "--out", str(work / "run")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise BundleError(f"building the default bundle failed (command: {' '.join(cmd)}):\n{tail}")
        metrics = json.loads((work / "run" / "metrics.json").read_text())
        produced = Path(metrics["bundle"])
        if not produced.is_absolute():
            produced = work / "run" / produced
        shutil.move(str(produced), str(work / "bundle"))
        metrics["bundle"] = str(target / "bundle")  # where it lives once moved into place
        (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
        shutil.rmtree(work / "run", ignore_errors=True)
    _prune_stale(target)


def _prune_stale(current: Path) -> None:
    """Builds of older recipes or code are never used again: drop them (not hidden in-progress builds)."""
    for old in current.parent.iterdir():
        if old != current and old.is_dir() and not old.name.startswith(".") and (old / "bundle" / MANIFEST).is_file():
            shutil.rmtree(old, ignore_errors=True)
