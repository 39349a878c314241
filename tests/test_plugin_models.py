"""Model manager logic (profile bundles, zip/URL installs with checks) and the dependency helper."""

from __future__ import annotations

import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from hostile_zips import deflate, raw_zip, tree_bytes, zero_deflate

from rs_clip_plugin import deps
from rs_clip_plugin.engine.bundle import BundleError, zip_bundle
from rs_clip_plugin.installed_bundles import DEFAULT_KEY, MemorySettings, ModelStore


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> ModelStore:
    monkeypatch.setenv("RSCLIP_BUNDLE", str(tmp_path / "no-builtin"))  # keep the user's default bundle out
    return ModelStore(tmp_path / "models", MemorySettings())


def test_add_folder_zip_url_default_remove(store: ModelStore, tiny_bundle: Path, tmp_path: Path) -> None:
    a = store.add_folder(tiny_bundle, name="tiny-a")
    assert a.modalities == ["rgb"] and a.languages == ["en"] and a.size_bytes > 0
    with pytest.raises(BundleError, match="no model bundle chosen"):
        store.resolve("")  # nothing chosen and no built-in default: the message says what to do

    z = zip_bundle(tiny_bundle, tmp_path / "tiny.zip")
    b = store.add_zip(z, name="tiny-b", sha256=hashlib.sha256(z.read_bytes()).hexdigest())
    url = z.resolve().as_uri()
    c = store.add_url(url, sha256=hashlib.sha256(z.read_bytes()).hexdigest(), name="tiny-c")
    assert [x.name for x in store.installed()] == ["tiny-a", "tiny-b", "tiny-c"]
    assert {x.name for x in (a, b, c)} == {"tiny-a", "tiny-b", "tiny-c"}

    store.set_default("tiny-b")
    assert store.settings.value(DEFAULT_KEY) == str(store.root / "tiny-b")
    assert store.resolve("") == store.root / "tiny-b"
    assert [x.is_default for x in store.installed()] == [False, True, False]
    assert store.resolve("tiny-c") == store.root / "tiny-c"

    store.remove("tiny-b")
    assert not (store.root / "tiny-b").exists()
    assert store.settings.value(DEFAULT_KEY) is None
    with pytest.raises(BundleError, match="installed already"):
        store.add_folder(tiny_bundle, name="tiny-a")
    with pytest.raises(BundleError, match="no installed bundle"):
        store.remove("tiny-b")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_zip_with_traversal_is_refused(store: ModelStore, tiny_bundle: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.write(tiny_bundle / "manifest.json", "manifest.json")
        zf.writestr("../../outside.txt", "pwned")
    with pytest.raises(BundleError, match="outside the bundle"):
        store.add_zip(evil)
    assert not (tmp_path / "outside.txt").exists() and not (store.root.parent / "outside.txt").exists()
    assert not list(store.root.iterdir())


def test_zip_bomb_is_refused_and_nothing_installed(store: ModelStore, tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = (tiny_bundle / "manifest.json").read_bytes()
    bomb = raw_zip(tmp_path / "bomb.zip", [("manifest.json", deflate(manifest), len(manifest)),
                                           ("pad.bin", zero_deflate(3 * 1024), 3 << 30)])
    with pytest.raises(BundleError, match="refusing it"):
        store.add_zip(bomb)
    assert tree_bytes(store.root) == 0 and tree_bytes(tmp_path) < 8 << 20


def test_folder_with_a_link_out_of_the_bundle_is_refused(store: ModelStore, tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "linked"
    shutil.copytree(tiny_bundle, folder)
    outside = tmp_path / "outside-tokenizer.json"
    shutil.move(folder / "tokenizer.json", outside)
    (folder / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError, match=r"'tokenizer\.json' is a link to a file outside the bundle"):
        store.add_folder(folder)
    assert not [p for p in store.root.iterdir()] if store.root.exists() else True


def test_checksum_and_corrupt_bundle_refused(store: ModelStore, tiny_bundle: Path, tmp_path: Path) -> None:
    z = zip_bundle(tiny_bundle, tmp_path / "tiny.zip")
    with pytest.raises(BundleError, match="sha256"):
        store.add_url(z.resolve().as_uri(), sha256="0" * 64)
    # A bundle whose ONNX file was altered fails the engine's hash check and is not installed.
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_bundle, broken)
    onnx = next(broken.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-10])
    with pytest.raises(BundleError, match="sha256 mismatch"):
        store.add_folder(broken)
    assert store.installed() == []
    with pytest.raises(BundleError, match="download failed"):
        store.add_url((tmp_path / "missing.zip").as_uri())


def test_resolve_errors(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle folder"):
        store.resolve(str(tmp_path / "nowhere"))
    with pytest.raises(BundleError, match="model manager"):
        store.resolve("not-installed")


def test_missing_packages_and_private_site(tmp_path: Path, monkeypatch) -> None:
    reqs = (deps.Requirement("numpy", "numpy<2", "arrays"), deps.Requirement("rsclip_no_such_pkg", "nope", "test"))
    assert [r.module for r in deps.missing_packages(reqs)] == ["rsclip_no_such_pkg"]
    assert deps.missing_packages() == []  # this venv has the whole engine

    site = tmp_path / "site"
    (site / "rsclip_no_such_pkg").mkdir(parents=True)
    (site / "rsclip_no_such_pkg" / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert deps.activate_private_site(site) == site
    assert sys.path[-1] == str(site)  # appended: QGIS's own packages keep priority
    assert deps.missing_packages(reqs) == []


def test_constraints_and_pip_command(tmp_path: Path) -> None:
    import numpy

    lines = deps.frozen_constraints()
    assert f"numpy=={numpy.__version__}" in lines
    c = deps.write_constraints(tmp_path / "c.txt")
    assert f"numpy=={numpy.__version__}" in c.read_text()
    missing = [deps.Requirement("onnxruntime", "onnxruntime>=1.16", "x"), deps.Requirement("tokenizers", "tokenizers>=0.15", "y")]
    cmd = deps.pip_install_command(missing, tmp_path / "t", c, gpu=True)
    assert cmd[1:4] == ["-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == str(tmp_path / "t")
    assert cmd[cmd.index("-c") + 1] == str(c)
    assert cmd[-2:] == ["onnxruntime-gpu>=1.16", "tokenizers>=0.15"]
    assert deps.pip_install_command(missing, tmp_path / "t", c, gpu=False)[-2] == "onnxruntime>=1.16"
    assert Path(cmd[0]).name.startswith("python")


def test_versions_not_just_presence(tmp_path, monkeypatch) -> None:
    """An old copy importable first must be reported with what to do, not taken as installed (issue 10, #12)."""
    import importlib
    import sys

    pkg = tmp_path / "rsclip_old_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    info = tmp_path / "rsclip_old_pkg-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rsclip_old_pkg\nVersion: 1.2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    old = deps.Requirement("rsclip_old_pkg", "rsclip_old_pkg>=1.16", "test", minimum="1.16")
    ok = deps.Requirement("rsclip_old_pkg", "rsclip_old_pkg>=1.1", "test", minimum="1.1", below="2")
    assert deps.missing_packages((old, ok)) == [old]
    assert old.problem() == "rsclip_old_pkg 1.2.0 is too old (RS-CLIP needs >= 1.16)"
    [line] = deps.shadowed([old])
    assert str(tmp_path) in line and "upgrade it there" in line
    assert "update" in deps.describe([old])
    assert deps._release("2.0rc1") == (2, 0) and deps._release("1.16.3+cu118") == (1, 16, 3)
    assert sys.modules.get("rsclip_old_pkg") is None  # checked without importing it


def test_pip_runs_for_qgis_python_not_a_shim(tmp_path, monkeypatch) -> None:
    """Inside QGIS sys.executable can be a pyenv shim on PATH: pip must run for QGIS's own interpreter."""
    import sys

    shim = tmp_path / "shims" / "python3"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\nexec /somewhere/else/python3 \"$@\"\n")
    shim.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(shim))
    exe = Path(deps.python_executable())
    assert exe != shim
    assert exe.resolve().is_relative_to(Path(sys.base_exec_prefix).resolve())
    monkeypatch.delenv("RSCLIP_PACKAGES", raising=False)
    site = deps.private_site_dir(tmp_path / "profile")
    assert site.name == f"py{sys.version_info.major}{sys.version_info.minor}"  # one folder per Python version
    c = deps.write_constraints(tmp_path / "c.txt")
    cmd = deps.pip_install_command([deps.ENGINE_REQUIREMENTS[2]], site, c, gpu=False, wheels=tmp_path / "wheels")
    assert cmd[0] == str(exe)
    assert cmd[cmd.index("--find-links") + 1] == str(tmp_path / "wheels") and "--no-index" in cmd
