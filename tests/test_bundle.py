"""The bundle contract: round trips, and every way a bundle can be broken is reported with the file named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from hostile_zips import deflate, raw_zip, tree_bytes, zero_deflate

from rs_clip_plugin.engine.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    BundleError,
    Manifest,
    load_bundle,
    read_manifest,
    safe_extract,
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


# --- every file of a bundle resolves inside it (issue 15, item 5) --------------------------------------------

@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "C:/outside.bin"])
def test_manifest_paths_outside_the_bundle_are_refused_and_never_read(entry: str, bundle_copy: Path,
                                                                      monkeypatch) -> None:
    import rs_clip_plugin.engine.bundle as bundle_mod

    (bundle_copy.parent / "outside.bin").write_bytes(b"secret")
    hashed: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p, *a, **k: hashed.append(str(p)) or real(p, *a, **k))
    _edit_manifest(bundle_copy, lambda d: d["files"].update({entry: "0" * 64}))
    with pytest.raises(BundleError, match=r"file entry .* points outside the bundle") as err:
        load_bundle(bundle_copy)
    assert entry in str(err.value) and "secret" not in str(err.value)
    assert not any("outside" in h or "hostname" in h for h in hashed)


def test_onnx_path_outside_the_bundle_is_refused(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda d: d["encoders"][0].update(onnx="../image_rgb.onnx"))
    with pytest.raises(BundleError, match=r"'\.\./image_rgb\.onnx' points outside the bundle"):
        load_bundle(bundle_copy, verify=False)


def test_symlink_to_a_file_outside_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path, capsys) -> None:
    outside = tmp_path / "outside.json"
    shutil.move(bundle_copy / "tokenizer.json", outside)
    (bundle_copy / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError, match=r"'tokenizer\.json' is a link to a file outside the bundle"):
        load_bundle(bundle_copy)
    assert rsclip_main(["info", str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and "outside the bundle" in err and "sha256" not in err
    # A link that stays inside the bundle is fine.
    (bundle_copy / "tokenizer.json").unlink()
    shutil.move(outside, bundle_copy / "tok-real.json")
    (bundle_copy / "tokenizer.json").symlink_to(bundle_copy / "tok-real.json")
    load_bundle(bundle_copy)


# --- zip bombs (issue 15, item 5) -----------------------------------------------------------------------------

def test_zip_declaring_gibibytes_is_refused_before_inflating(tiny_bundle: Path, tmp_path: Path) -> None:
    bomb = zero_deflate(3 * 1024)  # 3 GiB of zeros in ~3 MB
    z = raw_zip(tmp_path / "bomb.zip", [(MANIFEST, zlib.compress(b"{}")[2:-4], 2), ("pad.bin", bomb, 3 << 30)])
    assert z.stat().st_size < 4 << 20
    dest = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=r"bomb\.zip: the archive inflates to 3072 MiB .* refusing it"):
        safe_extract(z, dest)
    assert time.perf_counter() - t0 < 2.0
    assert tree_bytes(dest) == 0
    with pytest.raises(BundleError, match="refusing it"):
        load_bundle(z)
    cache = Path(os.environ["RSCLIP_CACHE"]) / "bundles"
    assert sum(tree_bytes(p) for p in cache.glob("*bomb*")) == 0 if cache.is_dir() else True


def test_zip_whose_declared_size_lies_stops_inflating(tmp_path: Path) -> None:
    bomb = zero_deflate(3 * 1024)
    z = raw_zip(tmp_path / "liar.zip", [("pad.bin", bomb, 4096)])  # says 4 KiB, inflates 3 GiB
    dest = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=r"liar\.zip"):
        safe_extract(z, dest)
    assert time.perf_counter() - t0 < 2.0
    assert tree_bytes(dest) <= 1 << 20  # at most one read chunk, never the GiBs


def test_zip_with_a_highly_compressed_pad_beside_a_real_bundle_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    files = [MANIFEST, *read_manifest(tiny_bundle).files]
    entries = [(rel, deflate((tiny_bundle / rel).read_bytes()), (tiny_bundle / rel).stat().st_size) for rel in files]
    entries.append(("pad.bin", zero_deflate(3 * 1024), 3 << 30))  # honest sizes, a 3 GiB pad
    z = raw_zip(tmp_path / "padded.zip", entries)
    assert z.stat().st_size < 20 << 20
    with pytest.raises(BundleError, match=r"20x compression"):
        load_bundle(z)
    # The same bundle without the pad unpacks: real bundles are far below the ratio limit.
    load_bundle(zip_bundle(tiny_bundle, tmp_path / "plain.zip"))


# --- embed_dim against the ONNX outputs (issue 15, item 6) ---------------------------------------------------

def test_embed_dim_must_match_the_onnx_outputs(bundle_copy: Path, capsys) -> None:
    _edit_manifest(bundle_copy, lambda d: d.update(embed_dim=32))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy, verify=False)
    msg = str(err.value)
    assert "64-wide embeddings" in msg and "embed_dim 32" in msg and str(bundle_copy) in msg
    assert "image encoder" in msg or "text encoder" in msg
    assert "re-export the bundle" in msg
    assert rsclip_main(["info", str(bundle_copy)]) == 2
    assert "embed_dim 32" in capsys.readouterr().err
