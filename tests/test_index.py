"""Embedding index: reuse, provenance-driven rebuilds, corruption, atomicity, geometry; on real rasters."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from plugin_support import s2_crop

from rs_clip_plugin.engine import pipeline
from rs_clip_plugin.engine.bundle import load_bundle, read_manifest, write_manifest
from rs_clip_plugin.engine.index import EMBEDDINGS, META, TILES, build_index, index_root, open_index, top_k
from rs_clip_plugin.engine.progress import Cancelled, Progress


@pytest.fixture()
def rgb_tif(tmp_path: Path, data_dir: Path) -> Path:
    """A real UC Merced aerial RGB tile (256 px), copied so the test may touch its mtime."""
    src = sorted((data_dir / "ucmerced" / "forest").glob("*.tif"))[0]
    dst = tmp_path / "forest.tif"
    shutil.copy(src, dst)
    return dst


def _extent(scene: Path, tiles: int = 4) -> tuple[float, float, float, float]:
    """A corner of the Major-TOM scene, ``tiles`` x ``tiles`` tiles of 64 px at 10 m: keeps tests fast."""
    with rasterio.open(scene / "B04.tif") as ds:
        b = ds.bounds
    size = tiles * 640.0
    return (b.left, b.top - size, b.left + size, b.top)


class _Forbid:
    """Stands in for pipeline.embed_tiles where the test asserts the encoder is NOT run."""

    def __call__(self, *a, **k):
        raise AssertionError("the encoder ran although a valid index was cached")


def test_build_then_reuse_without_encoding(tiny_bundle: Path, major_tom_dir: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RSCLIP_CACHE", str(tmp_path / "cache"))  # a first build, whatever ran before
    ext = _extent(major_tom_dir)
    idx = build_index(major_tom_dir, tiny_bundle, extent=ext, provider="cpu")
    assert not idx.reused and len(idx) == 16
    assert idx.meta["provider"] == "CPUExecutionProvider" and idx.meta["device_description"].startswith("CPU (")
    assert idx.meta["modality"] == "rgb" and idx.meta["sensor"] == "s2-l2a"
    assert isinstance(idx.embeddings, np.memmap)
    assert idx.embeddings.dtype == np.float32
    norms = np.linalg.norm(idx.embeddings.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    # Provenance: every band file of the per-band folder with its size and mtime.
    names = sorted(Path(f["path"]).name for f in idx.meta["files"])
    assert "B04.tif" in names and "B8A.tif" in names
    created = idx.meta["created"]

    monkeypatch.setattr(pipeline, "embed_tiles", _Forbid())
    again = build_index(major_tom_dir, tiny_bundle, extent=ext, provider="cpu")
    assert again.reused and again.root == idx.root and again.meta["created"] == created
    np.testing.assert_array_equal(np.asarray(again.embeddings), np.asarray(idx.embeddings))


def test_rebuild_on_changed_mtime_tiling_and_bundle(tiny_bundle: Path, rgb_tif: Path, tmp_path: Path) -> None:
    first = build_index(rgb_tif, tiny_bundle, provider="cpu")
    assert not first.reused
    assert first.meta["tile_px"] == 64 and len(first) == 16  # no georeferencing: the bundle's tile px
    assert build_index(rgb_tif, tiny_bundle, provider="cpu").reused

    st = rgb_tif.stat()
    os.utime(rgb_tif, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = build_index(rgb_tif, tiny_bundle, provider="cpu")
    assert not touched.reused and touched.root == first.root  # same identity, rebuilt in place
    assert touched.meta["files"][0]["mtime_ns"] == st.st_mtime_ns + 5_000_000_000

    overlapped = build_index(rgb_tif, tiny_bundle, overlap=0.5, provider="cpu")
    assert not overlapped.reused and overlapped.root != first.root
    assert overlapped.meta["stride_px"] == 32 and len(overlapped) == 49
    assert build_index(rgb_tif, tiny_bundle, provider="cpu").reused  # switching back reuses the first

    # Another bundle (same graphs, different manifest -> different digest) gets its own index.
    other = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, other)
    m = read_manifest(other)
    m.name = "rsclip-tiny-renamed"
    write_manifest(other, m)
    rebuilt = build_index(rgb_tif, load_bundle(other), provider="cpu")
    assert not rebuilt.reused and rebuilt.meta["bundle_digest"] != first.meta["bundle_digest"]


def test_float16_storage(tiny_bundle: Path, rgb_tif: Path) -> None:
    full = build_index(rgb_tif, tiny_bundle, provider="cpu")
    half = build_index(rgb_tif, tiny_bundle, provider="cpu", dtype="float16")
    assert half.root != full.root and half.embeddings.dtype == np.float16
    q = np.asarray(full.embeddings[0], np.float32)
    np.testing.assert_allclose(half.scores(q), full.scores(q), atol=2e-3)


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta", "tiles"])
def test_corrupt_cache_is_rebuilt(tiny_bundle: Path, rgb_tif: Path, damage: str) -> None:
    idx = build_index(rgb_tif, tiny_bundle, provider="cpu")
    good = np.asarray(idx.embeddings).copy()
    root = idx.root
    del idx
    if damage == "flip":
        p = root / EMBEDDINGS
        data = bytearray(p.read_bytes())
        data[-7] ^= 0xFF  # same size, different content: only the hash catches it
        p.write_bytes(bytes(data))
    elif damage == "truncate":
        p = root / EMBEDDINGS
        p.write_bytes(p.read_bytes()[:-100])
    elif damage == "meta":
        (root / META).write_text("{ not json")
    else:
        (root / TILES).unlink()
    again = build_index(rgb_tif, tiny_bundle, provider="cpu")
    assert not again.reused
    np.testing.assert_allclose(np.asarray(again.embeddings, np.float32), good.astype(np.float32), atol=2e-3)
    open_index(again.root)  # verifies cleanly now


@pytest.mark.parametrize("meta", [[], None, "text", 3, {}, "no-dim", "dim-string", "transform-short", "n-bool"])
def test_meta_of_the_wrong_shape_is_rebuilt(tiny_bundle: Path, rgb_tif: Path, meta) -> None:
    """Valid JSON that is not an index's meta.json (issue 15, item 7) is corrupt: rebuilt, never a crash."""
    idx = build_index(rgb_tif, tiny_bundle, provider="cpu")
    good = json.loads((idx.root / META).read_text())
    root = idx.root
    del idx
    if isinstance(meta, str) and meta != "text":
        bad = dict(good)
        if meta == "no-dim":
            del bad["dim"]
        elif meta == "dim-string":
            bad["dim"] = "64"
        elif meta == "transform-short":
            bad["transform"] = bad["transform"][:3]
        else:
            bad["n_tiles"] = True
        meta = bad
    (root / META).write_text(json.dumps(meta))
    again = build_index(rgb_tif, tiny_bundle, provider="cpu")
    assert not again.reused and again.root == root
    assert json.loads((root / META).read_text())["dim"] == good["dim"]
    assert build_index(rgb_tif, tiny_bundle, provider="cpu").reused


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}


def _vrt_over(tif: Path, vrt: Path, order: tuple[int, ...] = (1, 2, 3, 4)) -> Path:
    """A hand-written VRT over a 4-band GeoTIFF, bands named by descriptions (B02, B03, B04, B08)."""
    with rasterio.open(tif) as ds:
        w, h, dtype, gt, wkt, names = ds.width, ds.height, ds.dtypes[0], ds.transform.to_gdal(), ds.crs.to_wkt(), ds.descriptions
    bands = "".join(
        f'''<VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{i}"><Description>{names[b - 1]}</Description>
  <SimpleSource><SourceFilename relativeToVRT="1">{tif.name}</SourceFilename><SourceBand>{b}</SourceBand>
  <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/></SimpleSource>
</VRTRasterBand>''' for i, b in enumerate(order, start=1))
    vrt.write_text(f'''<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{wkt}</SRS>
<GeoTransform>{", ".join(map(repr, gt))}</GeoTransform>{bands}</VRTDataset>''')
    return vrt


def test_vrt_freshness_follows_the_pixels_not_its_statistics(tiny_bundle: Path, major_tom_dir: Path,
                                                              tmp_path: Path) -> None:
    """QGIS writes statistics into a VRT in every session (issue 10, defect 10): that is no reason to re-index;
    a changed file behind the VRT, or changed band definitions, are."""
    tif = s2_crop(major_tom_dir, tmp_path / "crop.tif", size=128)
    vrt = _vrt_over(tif, tmp_path / "scene.vrt")
    first = build_index(vrt, tiny_bundle, provider="cpu")
    assert not first.reused and len(first) == 4

    # What QGIS does: GDAL computes statistics and rewrites the VRT with them (and its own serialisation).
    from osgeo import gdal

    ds = gdal.Open(str(vrt))
    for i in range(1, ds.RasterCount + 1):
        ds.GetRasterBand(i).ComputeStatistics(False)
    ds = None
    text = vrt.read_text()
    assert "STATISTICS_MEAN" in text
    # ... and by hand, dataset-level metadata with a later mtime, whitespace changed.
    vrt.write_text(text.replace("<SRS", '<Metadata><MDI key="note">seen in QGIS</MDI></Metadata>\n  <SRS', 1))
    st = vrt.stat()
    os.utime(vrt, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    again = build_index(vrt, tiny_bundle, provider="cpu")
    assert again.reused and again.root == first.root
    kinds = {Path(f["path"]).name: f for f in first.meta["files"]}
    assert "vrt_sha256" in kinds["scene.vrt"] and kinds["crop.tif"]["size"] == tif.stat().st_size

    # A changed file behind the VRT: rebuilt.
    st = tif.stat()
    os.utime(tif, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    touched = build_index(vrt, tiny_bundle, provider="cpu")
    assert not touched.reused and touched.root == first.root
    assert build_index(vrt, tiny_bundle, provider="cpu").reused

    # Changed band definitions (B02's source reads B03's pixels): rebuilt, with other pixels.
    vrt.write_text(vrt.read_text().replace("<SourceBand>1</SourceBand>", "<SourceBand>2</SourceBand>", 1))
    swapped = build_index(vrt, tiny_bundle, provider="cpu")
    assert not swapped.reused
    assert not np.allclose(np.asarray(swapped.embeddings), np.asarray(touched.embeddings))


def test_cancelled_build_leaves_nothing(tiny_bundle: Path, major_tom_dir: Path) -> None:
    calls = []

    def on_update(fraction: float, message: str) -> None:
        calls.append(fraction)

    progress = Progress(on_update, is_cancelled=lambda: len(calls) >= 2)
    before = set(index_root().iterdir()) if index_root().is_dir() else set()
    with pytest.raises(Cancelled):
        build_index(major_tom_dir, tiny_bundle, extent=_extent(major_tom_dir, 6), provider="cpu", batch_size=4,
                    force=True, progress=progress)
    after = set(index_root().iterdir())
    assert after == before, f"left behind: {sorted(p.name for p in after - before)}"


def test_tile_geometry_matches_grid(tiny_bundle: Path, major_tom_dir: Path) -> None:
    ext = _extent(major_tom_dir, 3)
    idx = build_index(major_tom_dir, tiny_bundle, extent=ext, provider="cpu")
    with rasterio.open(major_tom_dir / "B04.tif") as ds:
        t = ds.transform
        assert idx.crs_wkt and rasterio.crs.CRS.from_wkt(idx.crs_wkt) == ds.crs
    col, row, w, h = idx.tiles[4]
    ring = idx.tile_polygon(4)
    assert ring[0] == ring[-1] and len(ring) == 5
    xs, ys = zip(*ring)
    assert (min(xs), max(ys)) == pytest.approx(t * (col, row))
    assert (max(xs), min(ys)) == pytest.approx(t * (col + w, row + h))
    assert idx.tile_bounds(4) == pytest.approx((min(xs), min(ys), max(xs), max(ys)))
    # The tiles cover exactly the requested extent.
    b = idx.all_bounds()
    assert (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()) == pytest.approx(ext)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # UC Merced photos: no georeference
def test_nodata_tiles_have_no_row(tiny_bundle: Path, tmp_path: Path, data_dir: Path) -> None:
    src = sorted((data_dir / "ucmerced" / "forest").glob("*.tif"))[0]
    with rasterio.open(src) as ds:
        arr = ds.read()
        profile = ds.profile
    arr[:, :128, :] = 0  # top half becomes no data
    profile.update(nodata=0)
    path = tmp_path / "half.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    idx = build_index(path, tiny_bundle, provider="cpu")
    assert idx.meta["grid_tiles"] == 16 and len(idx) == 8
    assert (idx.tiles[:, 1] >= 128).all()


def test_scores_and_top_k(tiny_bundle: Path, rgb_tif: Path) -> None:
    idx = build_index(rgb_tif, tiny_bundle, provider="cpu")
    q = np.array(idx.embeddings[3], np.float32)
    q /= np.linalg.norm(q)
    s = idx.scores(q)
    np.testing.assert_allclose(s, np.asarray(idx.embeddings, np.float32) @ q, atol=5e-3)
    rows, vals = idx.top_k(q, 5)
    assert rows[0] == 3 and vals[0] == pytest.approx(1.0, abs=5e-3)
    assert list(rows) == list(np.argsort(-s, kind="stable")[:5])
    with pytest.raises(ValueError, match="dimensions"):
        idx.scores(np.ones(7, np.float32))
    r, v = top_k(np.asarray([0.1, 0.9, 0.5]), 10)
    assert list(r) == [1, 2, 0] and v.dtype == np.float32


def test_meta_records_provenance(tiny_bundle: Path, rgb_tif: Path) -> None:
    idx = build_index(rgb_tif, tiny_bundle, provider="cpu")
    meta = json.loads((idx.root / META).read_text())
    for key in ("source", "files", "bundle_digest", "modality", "tile_px", "stride_px", "out_window", "sensor", "bands",
                "s2_offset_dn", "sar_units", "crs_wkt", "transform", "embeddings_sha256", "created", "provider", "seconds"):
        assert key in meta, key
    assert meta["source"] == str(rgb_tif.resolve())
    assert meta["bands"] == ["red", "green", "blue"]
