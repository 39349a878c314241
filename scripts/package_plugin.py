"""`make package`: dist/rs_clip_plugin-<version>.zip, installable with QGIS "Install from ZIP".

The zip holds one folder, rs_clip_plugin/, with metadata.txt, the Python package (plugin + engine),
resources/ (icon, class-name presets, prompt templates) and bundles/default/, the prebuilt embedded default
bundle (built once from the smoke recipe when missing), so that a zip install works offline with no
training code — no tests, caches, compiled files or data.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "rs_clip_plugin"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "tests", "data", "bundles"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".so.tmp", ".tmp"}
RESOURCE_FILES = ("icon.svg", "icon.png", "icon_classify.png", "icon_search.png", "prompt_templates.json")
RESOURCE_DIRS = ("classnames",)


def plugin_version(metadata: Path = REPO / "metadata.txt") -> str:
    cp = configparser.ConfigParser()
    cp.read(metadata, encoding="utf-8")
    return cp["general"]["version"]


def _files() -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = [(REPO / "metadata.txt", f"{PLUGIN}/metadata.txt")]
    for root, dirs, files in os.walk(REPO / PLUGIN):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if p.suffix in SKIP_SUFFIXES or name.startswith("."):
                continue
            out.append((p, p.relative_to(REPO).as_posix()))
    bundle = _default_bundle()
    for p in sorted(bundle.iterdir()):
        if p.is_file():
            out.append((p, f"{PLUGIN}/bundles/default/{p.name}"))
    res = REPO / "resources"
    for name in RESOURCE_FILES:
        if (res / name).is_file():
            out.append((res / name, f"{PLUGIN}/resources/{name}"))
    for d in RESOURCE_DIRS:
        for p in sorted((res / d).rglob("*")):
            if p.is_file():
                out.append((p, f"{PLUGIN}/resources/{p.relative_to(res).as_posix()}"))
    return out


def _default_bundle() -> Path:
    """The checkout's default bundle, built once (needs the training extras, which `make setup` installs),
    verified before it is shipped: a zip must never carry a bundle the plugin would refuse."""
    sys.path.insert(0, str(REPO))
    from rs_clip_plugin.engine.bundle import load_bundle
    from rs_clip_plugin.engine.default_bundle import built_default_bundle

    path = built_default_bundle(build=True)
    load_bundle(path)  # hashes and ONNX inputs
    return path


def build(out_dir: Path = REPO / "dist") -> Path:
    for needed in ("metadata.txt", "resources/icon.png", f"{PLUGIN}/__init__.py", "resources/classnames"):
        if not (REPO / needed).exists():
            raise SystemExit(f"package_plugin: {REPO / needed} is missing; the plugin cannot be packaged without it")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}-{plugin_version()}.zip"
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for src, arc in _files():
                zf.write(src, arc)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the zip (default dist/)")
    args = ap.parse_args(argv)
    path = build(args.out)
    with zipfile.ZipFile(path) as zf:
        n = len(zf.namelist())
    print(f"{path} ({n} files, {path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
