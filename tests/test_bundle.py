"""The bundle contract: round trips, and every way a bundle can be broken is reported with the file named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rs_clip_plugin.engine.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    BundleError,
    Manifest,
    load_bundle,
    read_manifest,
    write_manifest,
    zip_bundle,
)
from rs_clip_plugin.engine.cli import main as rsclip_main

RSCLIP = Path(sys.executable).with_name("rsclip")


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / MANIFEST).read_text())
    edit(data)
    (root / MANIFEST).write_text(json.dumps(data))


def test_write_read_round_trip(bundle_copy: Path) -> None:
    m = read_manifest(bundle_copy)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict()
    write_manifest(bundle_copy, again)  # re-hashing unchanged files gives the same manifest
    assert read_manifest(bundle_copy).to_dict() == m.to_dict()
    b = load_bundle(bundle_copy)
    assert b.manifest.encoder("rgb").tile_size_m == 640.0
    with pytest.raises(BundleError, match="has no 's1-grd' encoder"):
        b.manifest.encoder("s1-grd")


def test_info_json_in_process_and_as_subprocess(tiny_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert rsclip_main(["info", str(tiny_bundle), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["schema_version"], s["embed_dim"]) == (SCHEMA_VERSION, 64)
    assert [e["modality"] for e in s["encoders"]] == ["rgb"]
    proc = subprocess.run([str(RSCLIP), "info", str(tiny_bundle), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["encoders"][0]["modality"] == "rgb"


def test_flipped_byte_names_the_file(bundle_copy: Path) -> None:
    target = bundle_copy / "image_rgb.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"image_rgb\.onnx: sha256 mismatch"):
        load_bundle(bundle_copy)
    proc = subprocess.run([str(RSCLIP), "info", str(bundle_copy)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "image_rgb.onnx" in proc.stderr and "sha256 mismatch" in proc.stderr


def test_missing_file_named(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json: missing from the bundle"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(bundle_copy / "nowhere")


def test_schema_from_the_future(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=r"manifest\.json: schema version .* is newer.*update the plugin"):
        load_bundle(bundle_copy)


def test_onnx_input_shape_must_match_manifest(bundle_copy: Path) -> None:
    def bigger(d: dict) -> None:
        d["encoders"][0]["input_size"] = 128

    _edit_manifest(bundle_copy, bigger)
    with pytest.raises(BundleError, match=r"image_rgb\.onnx: input 'image' has shape .* manifest says \[batch, 3, 128, 128\]"):
        load_bundle(bundle_copy, verify=False)

    def longer_context(d: dict) -> None:
        d["encoders"][0]["input_size"] = 64
        d["text"]["context_length"] = 64

    _edit_manifest(bundle_copy, longer_context)
    with pytest.raises(BundleError, match=r"text\.onnx: input 'input_ids'"):
        load_bundle(bundle_copy, verify=False)


def test_modality_without_bands(bundle_copy: Path) -> None:
    def no_bands(d: dict) -> None:
        d["encoders"][0].update(bands=[], transforms=[], mean=[], std=[])

    _edit_manifest(bundle_copy, no_bands)
    with pytest.raises(BundleError, match=r"manifest\.json: encoder 'rgb': has no bands"):
        load_bundle(bundle_copy)


def test_zip_round_trip(tiny_bundle: Path, tmp_path: Path) -> None:
    z = zip_bundle(tiny_bundle, tmp_path / "tiny.zip")
    b = load_bundle(z)
    assert b.manifest.to_dict() == read_manifest(tiny_bundle).to_dict()
    assert b.root != tiny_bundle and (b.root / "text.onnx").is_file()
    assert load_bundle(z).root == b.root  # extracted once, then reused
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs/evil.txt", "sub/../../evil.txt"])
def test_zip_path_traversal_refused(entry: str, tiny_bundle: Path, tmp_path: Path) -> None:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tiny_bundle / MANIFEST, MANIFEST)
        zf.writestr(entry, "x")
    with pytest.raises(BundleError, match="outside the bundle; refusing this archive"):
        load_bundle(z)
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
    cache = Path(os.environ["RSCLIP_CACHE"]) / "bundles"
    assert not any(p.name.startswith("evil") for p in cache.iterdir()) if cache.is_dir() else True


def test_zip_symlink_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tiny_bundle / MANIFEST, MANIFEST)
        info = zipfile.ZipInfo("text.onnx")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(z)


def test_unchanged_bundle_is_checked_once_per_process_but_changes_are_caught(bundle_copy: Path, monkeypatch) -> None:
    import rs_clip_plugin.engine.bundle as bundle_mod

    hashed = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p, *a, **k: hashed.append(Path(p).name) or real(p, *a, **k))
    load_bundle(bundle_copy)
    first = len(hashed)
    assert first >= 3
    load_bundle(bundle_copy)
    assert len(hashed) == first  # nothing hashed again

    onnx = next(bundle_copy.glob("image_*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    st = onnx.stat()
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a write always moves mtime on
    with pytest.raises(BundleError, match=onnx.name):
        load_bundle(bundle_copy)
