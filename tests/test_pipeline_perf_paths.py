"""The fast paths of the tile pipeline (strip reads, in-place transform, reader-thread choice) give the
same encoder inputs and embeddings as the straightforward tile-by-tile path."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from rs_clip_plugin.engine import pipeline, raster
from rs_clip_plugin.engine.bands import S2_L2A_BANDS
from rs_clip_plugin.engine.bundle import EncoderSpec, load_bundle
from rs_clip_plugin.engine.errors import ReadError
from rs_clip_plugin.engine.pipeline import (
    TileStats,
    auto_workers,
    block_groups,
    embed_tiles,
    preprocess_tile,
    read_tile_batch,
    strip_groups,
)
from rs_clip_plugin.engine.progress import Cancelled, Progress
from rs_clip_plugin.engine.radiometry import BandTransform, apply_transform, default_transform
from rs_clip_plugin.engine.raster import open_source, upsample_bilinear, upsample_bilinear_valid
from rs_clip_plugin.engine.runtime import EncoderSession
from rs_clip_plugin.engine.tiling import make_grid


def _s2_spec(input_size: int, tile_px: int) -> EncoderSpec:
    units, transforms, mean, std = default_transform("s2-l2a", len(S2_L2A_BANDS))
    return EncoderSpec("s2-l2a", "unused.onnx", list(S2_L2A_BANDS), transforms, units, mean, std, input_size, 10.0, tile_px)


def _reference(read, windows, indices, spec, max_nodata=0.5):
    """The per-tile path as it was: read each window, check no data, apply_transform + resize_chw."""
    kept, batch, skipped, masks = [], [], [], {}
    for i in indices:
        tile = read(windows[i])
        nodata = np.isnan(tile).any(axis=0)
        frac = float(nodata.mean())
        if frac > max_nodata:
            skipped.append(i)
            continue
        if frac > 0:
            masks[i] = nodata
        batch.append(preprocess_tile(tile, spec))
        kept.append(i)
    return kept, np.stack(batch) if batch else np.zeros((0,)), skipped, masks


def _assert_same(strip_result, ref_result) -> None:
    kept, batch, skipped, masks = strip_result
    r_kept, r_batch, r_skipped, r_masks = ref_result
    assert kept == r_kept and skipped == r_skipped
    assert masks.keys() == r_masks.keys()
    for k in masks:
        np.testing.assert_array_equal(masks[k], r_masks[k])
    if kept:
        assert batch.shape == r_batch.shape and batch.dtype == np.float32
        np.testing.assert_allclose(batch, r_batch, rtol=0, atol=1e-6)


def test_strip_reads_match_tile_reads_on_12_bands_with_resampled_bands(major_tom_dir: Path) -> None:
    # 20 and 60 m bands go through the warper: a strip must resample exactly like the tiles cut from it.
    # Overlapping tiles (stride < tile) and tile px != input size exercise the resize and shared pixels.
    spec = _s2_spec(input_size=48, tile_px=100)
    with open_source(major_tom_dir) as src:
        assert src.sensor == "s2-l2a" and len(src.band_names) == 12
        read = src.encoder_input(spec)
        grid = make_grid(src, 100, stride_px=70)
        idx = list(range(len(grid.windows)))
        for batch in (idx[:37], idx[37:120], idx[120:]):  # batches that start and end mid-row
            got = read_tile_batch(read, grid.windows, batch, spec, keep_masks=True)
            _assert_same(got, _reference(read, grid.windows, batch, spec))


def test_strip_reads_match_on_rgb_composite_with_tiny_bundle(major_tom_dir: Path, tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    spec = b.manifest.encoder("rgb")
    with open_source(major_tom_dir) as src:
        read = src.encoder_input(spec)
        grid = make_grid(src, spec.tile_size_px)
        idx = list(range(len(grid.windows)))
        got = read_tile_batch(read, grid.windows, idx, spec)
        _assert_same(got, _reference(read, grid.windows, idx, spec))
        tile_by_tile = read_tile_batch(read, grid.windows, idx, spec, strips=False)
        np.testing.assert_array_equal(got[1], tile_by_tile[1])


def _write_with_holes(path: Path, size: int = 150) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(1, 4000, (3, size, size)).astype(np.uint16)
    data[:, :60, :90] = 0  # declared nodata: whole tiles skipped, others partial
    data[1, 100:110, 20:140] = 0  # a nodata line in one band only
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint16", nodata=0,
                   crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000), tiled=True,
                   blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.descriptions = ("B04", "B03", "B02")


def test_strip_reads_match_skips_masks_and_padding(tmp_path: Path) -> None:
    path = tmp_path / "holes.tif"
    _write_with_holes(path)
    spec = EncoderSpec("rgb", "unused.onnx", ["red", "green", "blue"], [BandTransform(1.0, 0.0, (0.0, 1.0))] * 3,
                       "unit", [0.48, 0.46, 0.41], [0.27, 0.26, 0.28], 32, 10.0, 40)
    with open_source(path, sensor="s2-l2a") as src:
        read = src.encoder_input(spec)
        grid = make_grid(src, 40, stride_px=30)
        idx = list(range(len(grid.windows)))
        got = read_tile_batch(read, grid.windows, idx, spec, keep_masks=True)
        ref = _reference(read, grid.windows, idx, spec)
        assert ref[2] and ref[3], "the raster must give both skipped and partial tiles"
        _assert_same(got, ref)
        # Tiles sticking out past the raster (windows the grid never makes, but callers may pass) pad with NaN.
        outside = [Window(-10, 130, 40, 40), Window(20, 130, 40, 40), Window(60, 130, 40, 40)]
        got = read_tile_batch(read, outside, [0, 1, 2], spec, max_nodata=0.9, keep_masks=True)
        _assert_same(got, _reference(read, outside, [0, 1, 2], spec, max_nodata=0.9))


def test_strip_groups_bound_memory_and_cover_their_tiles() -> None:
    tiles = [Window(c, r, 64, 64) for r in (0, 48) for c in range(0, 640, 48)]
    tiles.append(Window(2000, 48, 64, 64))  # far to the right: a gap wider than a tile starts a new read
    groups = strip_groups(tiles, range(len(tiles)), n_bands=12, max_bytes=4 * 12 * 64 * 200)
    assert [i for g in groups for i in g.indices] == list(range(len(tiles)))
    for g in groups:
        assert 4 * 12 * int(g.window.height) * int(g.window.width) <= 4 * 12 * 64 * 200
        for i in g.indices:
            t = tiles[i]
            assert t.row_off == g.window.row_off and t.height == g.window.height
            assert g.window.col_off <= t.col_off and t.col_off + t.width <= g.window.col_off + g.window.width
    assert groups[-1].indices == (len(tiles) - 1,)
    assert len({g.window.row_off for g in groups}) == 2
    # Unbounded: one strip per tile row (plus the far tile).
    assert len(strip_groups(tiles, range(len(tiles)), n_bands=12)) == 3
    # A single tile larger than the budget is still read (alone).
    assert len(strip_groups([Window(0, 0, 64, 64)], [0], n_bands=12, max_bytes=1)) == 1


def _transform_reference(x: np.ndarray, spec: EncoderSpec) -> np.ndarray:
    """The encoder transform written out plainly (the formula of radiometry's docstring), for comparison."""
    col = (len(spec.transforms), 1, 1)
    scale = np.array([t.scale for t in spec.transforms], np.float32).reshape(col)
    offset = np.array([t.offset for t in spec.transforms], np.float32).reshape(col)
    lo = np.array([t.clip[0] if t.clip else -np.inf for t in spec.transforms], np.float32).reshape(col)
    hi = np.array([t.clip[1] if t.clip else np.inf for t in spec.transforms], np.float32).reshape(col)
    y = np.clip(x * scale + offset, lo, hi)
    y = (y - np.array(spec.mean, np.float32).reshape(col)) / np.array(spec.std, np.float32).reshape(col)
    return np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)


@pytest.mark.parametrize("clip", [(0.0, 1.0), None])
@pytest.mark.parametrize("inplace", [False, True])
def test_apply_transform_copy_and_in_place_equal_the_formula(clip, inplace: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.5, (3, 17, 23)).astype(np.float32)
    x[0, 1, 2] = np.nan
    x[1, 3, 4] = np.inf
    x[2, 5, 6] = -np.inf
    spec = EncoderSpec("rgb", "unused.onnx", ["red", "green", "blue"],
                       [BandTransform(2.0, -0.1, clip), BandTransform(0.5, 0.2, clip), BandTransform(1.0, 0.0, clip)],
                       "unit", [0.4, 0.5, 0.6], [0.2, 0.3, 0.25], 23, 10.0, 23)
    want = _transform_reference(x, spec)
    given = x.copy()
    got = apply_transform(given, spec.transforms, spec.mean, spec.std, inplace=inplace)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()
    assert (got is given) == inplace and (inplace or np.array_equal(given, x, equal_nan=True))
    with pytest.raises(ValueError, match="bands in the data"):
        apply_transform(x[:2].copy(), spec.transforms, spec.mean, spec.std, inplace=inplace)
    with pytest.raises(ValueError, match="writable float32"):
        apply_transform(x.astype(np.float64), spec.transforms, spec.mean, spec.std, inplace=True)


@pytest.mark.parametrize("nan_mask", [False, True])
def test_apply_transform_identity_steps_and_given_nan_mask(nan_mask: bool) -> None:
    """Steps that change nothing are skipped; a given NaN mask gives what the transform's own would."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.6, (2, 9, 11)).astype(np.float32)
    x[1, 2, 3] = np.nan
    spec = EncoderSpec("s2-l2a", "unused.onnx", ["B02", "B03"],
                       [BandTransform(1.0, 0.0, (0.0, 1.0)), BandTransform(1.0, 0.0, (0.2, 0.8))],
                       "reflectance", [0.0, 0.0], [1.0, 1.0], 11, 10.0, 11)
    want = _transform_reference(x, spec)
    got = apply_transform(x.copy(), spec.transforms, spec.mean, spec.std, inplace=True,
                          nan_mask=np.isnan(x) if nan_mask else None)
    np.testing.assert_array_equal(got, want)
    assert got[0].min() == 0.0 and got[0].max() == 1.0 and got[1].min() == 0.0 and got[1].max() == np.float32(0.8)


@pytest.mark.parametrize(("k", "hs", "ws", "h", "w", "offset"), [
    (2, 34, 274, 64, 544, (0, 0)), (2, 33, 40, 64, 77, (1, 1)), (6, 12, 93, 64, 544, (3, 5)),
    (6, 2, 3, 7, 13, (5, 2)), (3, 1, 1, 2, 3, (1, 0)),
])
def test_upsample_bilinear_valid_equals_the_general_kernel(k, hs, ws, h, w, offset) -> None:
    """The whole-factor fast path (float32, row gathers) gives the general kernel's values, edges included."""
    src = np.random.default_rng(k + hs).uniform(0, 1, (hs, ws)).astype(np.float32)
    want = upsample_bilinear(src[None], np.ones((1, hs, ws), bool), k, offset, (h, w))[0]
    got = upsample_bilinear_valid(src, k, offset, np.empty((h, w), np.float32))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


@pytest.mark.parametrize(("k", "hs", "ws", "h", "w", "offset"), [
    (2, 34, 274, 64, 544, (0, 0)), (2, 260, 546, 512, 1088, (1, 1)), (6, 12, 93, 64, 544, (3, 5)), (3, 1, 1, 2, 3, (1, 0)),
])
def test_phase_upsampling_is_bit_identical_to_index_gathers(k, hs, ws, h, w, offset) -> None:
    """The phase path (slices of an edge-padded band) gives the gather path's float32 values exactly, and a
    pixel's value does not depend on where the read starts (strip or tile: same phase, same fraction)."""
    src = np.random.default_rng(k * hs).uniform(-1, 1, (hs, ws)).astype(np.float32)
    got = upsample_bilinear_valid(src, k, offset, np.empty((h, w), np.float32))
    np.testing.assert_array_equal(got, raster._upsample_gather(src, k, offset, np.empty((h, w), np.float32)))
    # The same fine pixels read from a source span that starts one row later (as a tile read within a strip):
    # identical values.
    if hs > 2 and h > 2 * k:
        part = upsample_bilinear_valid(src[1:], k, (offset[0] + k, offset[1]), np.empty((h - 2 * k, w), np.float32))
        np.testing.assert_array_equal(part, got[2 * k :])


def test_auto_workers() -> None:
    assert auto_workers(gpu=False, cores=2) == 1
    assert auto_workers(gpu=False, cores=16) == 2
    assert auto_workers(gpu=True, cores=2) == 1
    assert auto_workers(gpu=True, cores=16) == 4


def test_embeddings_same_for_any_reader_count(major_tom_dir: Path, tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    with open_source(major_tom_dir) as src:
        grid = make_grid(src, 64)
        grid.windows = grid.windows[:60]
        session = EncoderSession(b, "rgb", provider="cpu")
        results = {}
        for workers in (0, 1, None):
            stats = TileStats()
            out = {i: e for idx, emb in embed_tiles(src, b, "rgb", grid, session=session, batch_size=16,
                                                    workers=workers, stats=stats) for i, e in zip(idx, emb)}
            assert stats.embedded == 60 and sorted(out) == list(range(60))
            results[workers] = np.stack([out[i] for i in range(60)])
        np.testing.assert_allclose(results[1], results[0], atol=1e-6)
        np.testing.assert_allclose(results[None], results[0], atol=1e-6)


def _band_file(path: Path, data: np.ndarray, res: float, x0: float = 500000.0, y0: float = 5000000.0) -> None:
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype="uint16", nodata=0,
                   crs="EPSG:32633", transform=Affine(res, 0, x0, 0, -res, y0))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)


def test_whole_factor_upsampling_equals_gdal_warper(tmp_path: Path) -> None:
    """20/60 m bands resampled in numpy give the warper's values and no-data (holes, edges, outside)."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "bands"
    folder.mkdir()
    for name in ("B02", "B03", "B04", "B08"):
        _band_file(folder / f"{name}.tif", rng.integers(1, 5000, (120, 120)).astype(np.uint16), 10.0)
    b05 = rng.integers(1, 5000, (60, 60)).astype(np.uint16)
    b05[10:14, 20:30] = 0  # a hole: neighbours renormalise, the inside is no data
    b05[40, 41] = 0  # a single no-data pixel
    b05[0, :] = 0  # an edge row of no data
    _band_file(folder / "B05.tif", b05, 20.0)
    b01 = rng.integers(1, 5000, (20, 20)).astype(np.uint16)
    b01[5:7, 5:9] = 0
    _band_file(folder / "B01.tif", b01, 60.0)
    # Origin shifted by half a 20 m pixel: not a whole-factor grid, so the warper still resamples it.
    _band_file(folder / "B06.tif", rng.integers(1, 5000, (60, 60)).astype(np.uint16), 20.0, x0=500010.0)
    fast = open_source(folder)
    warper = open_source(folder)
    warper.resample_with_warper = True
    try:
        assert fast.width == 120 and set(fast.band_names) >= {"B01", "B05", "B06"}
        uri = {n: fast._bands[n].ref.uri for n in ("B01", "B05", "B06")}
        assert fast._upsample_factor(uri["B05"]) == 2 and fast._upsample_factor(uri["B01"]) == 6
        assert fast._upsample_factor(uri["B06"]) is None
        for win in (Window(0, 0, 120, 120), Window(17, 5, 33, 21), Window(-7, 100, 50, 50), Window(119, 0, 1, 120)):
            x, y = fast.read(win), warper.read(win)
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
        full = fast.read(Window(0, 0, 120, 120), ["B05"])[0]
        assert np.isnan(full[22:26, 42:58]).all() and np.isnan(full[80:82, 82:84]).all() and np.isfinite(full[30:70]).all()
    finally:
        fast.close()
        warper.close()


def test_whole_factor_upsampling_equals_warper_on_real_bands(major_tom_dir: Path) -> None:
    with open_source(major_tom_dir) as fast, open_source(major_tom_dir) as warper:
        warper.resample_with_warper = True
        names = ["B01", "B05", "B8A", "B12"]
        for win in (Window(100, 37, 333, 65), Window(-20, 1000, 200, 100)):
            x, y = fast.read(win, names), warper.read(win, names)
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


# --- parallel readers (issue 12): same inputs in the same order for any reader count, clean stops ----------
def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rsclip-read")]


def _inputs_by_workers(src, b, grid, session, workers: int, **kw) -> tuple[list[int], np.ndarray, TileStats]:
    """Tile indices in the order embed_tiles yields them and the encoder inputs it prepared (``encode`` keeps them)."""
    stats = TileStats(keep_masks=True)
    order, inputs = [], []
    for idx, x in embed_tiles(src, b, "s2-l2a", grid, session=session, batch_size=8, workers=workers, stats=stats,
                              encode=lambda batch: batch.copy(), **kw):
        order += idx
        inputs.append(x)
    return order, np.concatenate(inputs), stats


def test_parallel_readers_prepare_bit_identical_inputs_in_grid_order(multimodal_bundle: Path, major_tom_dir: Path,
                                                                      monkeypatch) -> None:
    """12 bands with 20/60 m bands upsampled, overlapping tiles (multi-row blocks share rows), units of a few
    batches: every reader count gives the same encoder inputs, bit for bit, yielded in grid order; equal to
    tile-by-tile reads; and the embeddings of 1 and 3 readers are identical."""
    monkeypatch.setattr(pipeline, "UNIT_MAX_BYTES", 3 * 8 * 4 * 12 * 64 * 64)  # 24-tile units: many per run
    b = load_bundle(multimodal_bundle)
    with open_source(major_tom_dir) as src:
        spec = b.manifest.encoder("s2-l2a")
        grid = make_grid(src, 64, stride_px=48)
        grid.windows = grid.windows[:150]
        session = EncoderSession(b, "s2-l2a", provider="cpu", threads=1, precision="fp32")
        units = pipeline.work_units(len(grid.windows), 8, spec)
        assert len(units) > 4 and all(len(u) % 8 == 0 for u in units[:-1])
        ref_order, ref, _ = _inputs_by_workers(src, b, grid, session, 0)
        assert ref_order == list(range(150))
        for workers in (1, 2, 4):
            order, got, stats = _inputs_by_workers(src, b, grid, session, workers)
            assert order == ref_order and stats.embedded == 150 and stats.skipped == []
            np.testing.assert_array_equal(got, ref)
        _, tile_by_tile, _, _ = read_tile_batch(src.encoder_input(spec), grid.windows, range(150), spec, strips=False)
        np.testing.assert_allclose(ref, tile_by_tile, rtol=0, atol=1e-6)
        emb = {w: np.concatenate([e for _, e in embed_tiles(src, b, "s2-l2a", grid, session=session, batch_size=8,
                                                              workers=w)]) for w in (1, 3)}
        np.testing.assert_array_equal(emb[1], emb[3])
    assert not _reader_threads()


def test_block_groups_merge_adjacent_rows_of_the_same_columns_only() -> None:
    tiles = [Window(c, r, 64, 64) for r in (0, 48, 96) for c in range(0, 192, 48)]  # 3 overlapping rows of 4
    tiles.append(Window(0, 400, 64, 64))  # a row far below: not adjacent, read on its own
    strips = strip_groups(tiles, range(len(tiles)), n_bands=12)
    blocks = block_groups(strips, n_bands=12)
    assert [g.indices for g in blocks] == [tuple(range(12)), (12,)]
    assert blocks[0].window == Window(0, 0, 208, 160)
    # Bounded like a strip: with room for two rows only, the third starts a new block.
    bounded = block_groups(strips, n_bands=12, max_bytes=4 * 12 * 112 * 208)
    assert [g.indices for g in bounded] == [tuple(range(8)), tuple(range(8, 12)), (12,)]
    # Different column spans (a batch that starts mid-row) are not merged.
    assert len(block_groups(strip_groups(tiles, range(2, 12), n_bands=12), n_bands=12)) == 2


def test_cancel_mid_read_stops_the_readers(multimodal_bundle: Path, major_tom_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "UNIT_MAX_BYTES", 8 * 4 * 12 * 64 * 64)  # one batch per unit: many reads queued
    b = load_bundle(multimodal_bundle)
    with open_source(major_tom_dir) as src:
        grid = make_grid(src, 64)
        session = EncoderSession(b, "s2-l2a", provider="cpu", threads=1)
        checks = {"n": 0}

        def cancelled() -> bool:
            checks["n"] += 1
            return checks["n"] > 3

        got = []
        with pytest.raises(Cancelled):
            for idx, _ in embed_tiles(src, b, "s2-l2a", grid, session=session, batch_size=8, workers=3,
                                      progress=Progress(None, cancelled)):
                got += idx
        assert got == list(range(len(got))) and 0 < len(got) < len(grid.windows)
    assert not _reader_threads()


def test_a_failing_read_in_a_reader_thread_is_one_read_error(multimodal_bundle: Path, major_tom_dir: Path,
                                                             tmp_path: Path) -> None:
    """A band file truncated after opening (a failing disk or download) fails in a worker thread: the caller gets
    the engine's ReadError naming the file, in one line, and no reader thread is left behind."""
    folder = tmp_path / "scene"
    folder.mkdir()
    for f in major_tom_dir.glob("B*.tif"):
        shutil.copy(f, folder / f.name)
    b = load_bundle(multimodal_bundle)
    for workers in (0, 2):
        with open_source(folder) as src:
            grid = make_grid(src, 64)
            session = EncoderSession(b, "s2-l2a", provider="cpu", threads=1)
            broken = folder / "B08.tif"
            if broken.stat().st_size > 10_000:
                with open(broken, "r+b") as f:
                    f.truncate(broken.stat().st_size // 3)
            with pytest.raises(ReadError) as err:
                for _ in embed_tiles(src, b, "s2-l2a", grid, session=session, batch_size=8, workers=workers):
                    pass
            msg = str(err.value)
            assert "\n" not in msg and "B08.tif" in msg and "truncated or damaged" in msg
        assert not _reader_threads()
