"""Tile grids (coverage, overlap, extent), tile sizes from the bundle, nodata skipping, logit averaging."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from rs_clip_plugin.engine import tiling
from rs_clip_plugin.engine.bundle import EncoderSpec
from rs_clip_plugin.engine.errors import InputError, cli_names
from rs_clip_plugin.engine.radiometry import default_transform
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.tiling import (
    LogitAccumulator,
    make_grid,
    nodata_fraction,
    should_skip,
    tile_size_px_for,
)

X0, Y0, RES = 500000.0, 4000000.0, 10.0


def s1_raster(path: Path, height: int, width: int) -> Path:
    data = np.full((2, height, width), -10.0, np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=2, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(X0, Y0, RES, RES)) as ds:
        ds.write(data)
        ds.set_band_description(1, "VV")
        ds.set_band_description(2, "VH")
    return path


def coverage(grid: tiling.TileGrid, height: int, width: int) -> np.ndarray:
    count = np.zeros((height, width), int)
    for w in grid.windows:
        count[int(w.row_off) : int(w.row_off + w.height), int(w.col_off) : int(w.col_off + w.width)] += 1
    return count


def test_grid_without_overlap_shifts_last_tiles_inward(tmp_path: Path) -> None:
    with open_source(s1_raster(tmp_path / "a.tif", 70, 100)) as src:
        grid = make_grid(src, 32)
    cols = sorted({int(w.col_off) for w in grid.windows})
    rows = sorted({int(w.row_off) for w in grid.windows})
    assert cols == [0, 32, 64, 68] and rows == [0, 32, 38]
    assert len(grid) == 12 and grid.stride_px == 32 and grid.out_shape == (70, 100)
    assert (coverage(grid, 70, 100) >= 1).all()  # every pixel covered, no tile leaves the raster
    assert grid.extent == (X0, Y0 - 700, X0 + 1000, Y0)


def test_grid_with_overlap(tmp_path: Path) -> None:
    with open_source(s1_raster(tmp_path / "a.tif", 70, 100)) as src:
        grid = make_grid(src, 32, stride_px=16)
    assert sorted({int(w.col_off) for w in grid.windows}) == [0, 16, 32, 48, 64, 68]
    cov = coverage(grid, 70, 100)
    assert cov.min() >= 1 and cov[20, 20] == 4  # interior pixels see 2 x 2 tiles (more near the shifted edge)
    with pytest.raises(ValueError, match="stride"):
        make_grid(src, 32, stride_px=40)


def test_grid_with_extent_snaps_to_pixels(tmp_path: Path) -> None:
    with open_source(s1_raster(tmp_path / "a.tif", 70, 100)) as src:
        # cols 10..50 and rows 5..40, with the far edges not on pixel boundaries (snapped outward).
        extent = (X0 + 100, Y0 - 395, X0 + 495, Y0 - 50)
        grid = make_grid(src, 16, extent=extent)
        assert grid.out_window == Window(10, 5, 40, 35)
        assert grid.out_transform * (0, 0) == (X0 + 100, Y0 - 50)
        assert grid.extent == (X0 + 100, Y0 - 400, X0 + 500, Y0 - 50)
        for w in grid.windows:
            assert w.col_off >= 10 and w.col_off + w.width <= 50 and w.row_off >= 5 and w.row_off + w.height <= 40
        small = make_grid(src, 32, extent=(X0 + 900, Y0 - 700, X0 + 1000, Y0 - 600))  # 10 x 10 px at the corner
        # One tile around the small extent, shifted inside the raster: real pixels, no padding, not skipped.
        assert small.windows == [Window(68, 38, 32, 32)] and small.out_window == Window(90, 60, 10, 10)
        tile = src.read(small.windows[0])
        assert nodata_fraction(tile) == 0.0 and not should_skip(tile)
        mid = make_grid(src, 32, extent=(X0 + 400, Y0 - 400, X0 + 500, Y0 - 300))  # 10 x 10 px inside
        assert mid.windows == [Window(29, 19, 32, 32)]  # centred on it
        with pytest.raises(ValueError, match="does not overlap"):
            make_grid(src, 32, extent=(0, 0, 10, 10))


def test_tile_size_from_bundle(major_tom_dir: Path, data_dir: Path) -> None:
    u, t, m, s = default_transform("s2-l2a", 12)
    spec = EncoderSpec("s2-l2a", "x.onnx", ["B01"] * 12, t, u, m, s, 32, 10.0, 64)
    with open_source(major_tom_dir) as src:
        assert tile_size_px_for(spec, src) == 64
        assert tile_size_px_for(spec, src, tile_size_m=1280) == 128
    with open_source(next((data_dir / "ssl4eo_s12" / "s2a").glob("*/*"))) as src:  # EPSG:4326, ~9.7 m
        assert 64 < tile_size_px_for(spec, src) < 70
    with open_source(next((data_dir / "ucmerced" / "forest").glob("*.tif"))) as src:  # no georeferencing
        assert tile_size_px_for(spec, src) == 64


def test_tile_size_is_clamped_to_small_rasters_and_bounded(tmp_path: Path, major_tom_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    u, t, m, s = default_transform("s1-grd", 2)
    spec = EncoderSpec("s1-grd", "x.onnx", ["VV", "VH"], t, u, m, s, 32, 10.0, 64)  # 640 m tiles
    with open_source(s1_raster(tmp_path / "small.tif", 40, 50)) as src:
        assert tile_size_px_for(spec, src) == 40  # the default tile shrinks to the raster's shorter side
        assert tile_size_px_for(spec, src, tile_size_m=450) == 40  # between the sides: clamped as well
        grid = make_grid(src, tile_size_px_for(spec, src))
        assert [(int(w.col_off), int(w.row_off), int(w.width)) for w in grid.windows] == [(0, 0, 40), (10, 0, 40)]
        for bad, said in ((float("nan"), "nan"), (float("inf"), "inf"), (-5.0, "-5"), (0, "0"), ("abc", "'abc'")):
            with pytest.raises(InputError, match=r"^`tile_size_m` .*" + re.escape(said)) as err:
                tile_size_px_for(spec, src, tile_size_m=bad)
            assert err.value.params == ("tile_size_m",)
            assert "--tile-size-m" in err.value.render(cli_names(err.value.params))
        with pytest.raises(InputError, match=r"1e\+09 m is larger than the whole raster small\.tif .*at most 500 m"):
            tile_size_px_for(spec, src, tile_size_m=1e9)
    # A 30 km tile on the 10.7 km Major-TOM scene is refused before anything is read or allocated.
    u, t, m, s = default_transform("s2-l2a", 12)
    s2 = EncoderSpec("s2-l2a", "x.onnx", ["B01"] * 12, t, u, m, s, 32, 10.0, 64)
    with open_source(major_tom_dir) as src:
        with pytest.raises(InputError, match="30000 m is larger than the whole raster"):
            tile_size_px_for(s2, src, tile_size_m=30_000)
        assert tile_size_px_for(s2, src, tile_size_m=8000) == 800
        monkeypatch.setattr(tiling, "MAX_TILE_BYTES", 12 * 4 * 500 * 500)  # memory bound: 500 px for 12 bands
        with pytest.raises(InputError, match=r"800 x 800 px in 12 bands needs 29 MiB per read; give at most 5000 m"):
            tile_size_px_for(s2, src, tile_size_m=8000)


def test_nodata_fraction_counts_pixels_with_any_nan_band() -> None:
    tile = np.zeros((3, 4, 4), np.float32)
    tile[0, 0, :] = np.nan
    tile[2, 1, :2] = np.nan
    assert nodata_fraction(tile) == pytest.approx(6 / 16)
    assert not should_skip(tile) and should_skip(tile, max_nodata=0.25)
    mask = np.isnan(tile).any(axis=0)  # the strip reader's form: the same fraction and rule
    assert nodata_fraction(mask) == pytest.approx(6 / 16) and should_skip(mask, max_nodata=0.25)


def accumulate(grid: tiling.TileGrid) -> LogitAccumulator:
    acc = LogitAccumulator(grid, 2, strip_rows=3)
    a, b = grid.windows  # cols 0..3 and 2..5
    acc.add(a, np.array([1.0, 0.0]))
    acc.add(b, np.array([3.0, 2.0]))
    return acc


def test_logit_accumulator_averages_overlap(tmp_path: Path) -> None:
    with open_source(s1_raster(tmp_path / "a.tif", 4, 6)) as src:
        grid = make_grid(src, 4, stride_px=2)
    assert grid.windows == [Window(0, 0, 4, 4), Window(2, 0, 4, 4)]
    acc = accumulate(grid)
    strips = list(acc.strips())
    assert strips == [Window(0, 0, 6, 3), Window(0, 3, 6, 1)]
    out = np.concatenate([acc.averaged(w) for w in strips], axis=1)
    want_class0 = np.array([1, 1, 2, 2, 3, 3], np.float32)  # (1 + 3) / 2 where both tiles cover
    want_class1 = np.array([0, 0, 1, 1, 2, 2], np.float32)
    assert np.array_equal(out[0], np.tile(want_class0, (4, 1)))
    assert np.array_equal(out[1], np.tile(want_class1, (4, 1)))
    # A per-pixel map adds to the same average; a pixel no tile covers is NaN.
    dense = np.zeros((2, 4, 4), np.float32)
    dense[:, 0, 0] = 7.0
    acc.add(Window(0, 0, 4, 4), dense)
    got = acc.averaged(Window(0, 0, 6, 1))
    assert got[0, 0, 0] == pytest.approx((1 + 7) / 2) and got[0, 0, 1] == pytest.approx(0.5) and got[0, 0, 5] == pytest.approx(3.0)
    empty = LogitAccumulator(grid, 2)
    empty.add(grid.windows[1], np.array([5.0, 5.0]))  # the first tile was skipped (nodata)
    res = empty.averaged(Window(0, 0, 6, 4))
    assert np.isnan(res[:, :, :2]).all() and (res[:, :, 2:] == 5.0).all()


def test_logit_accumulator_memmap_and_extent_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiling, "DENSE_IN_MEMORY_BYTES", 0)  # force the disk-backed path
    with open_source(s1_raster(tmp_path / "a.tif", 20, 20)) as src:
        grid = make_grid(src, 4, stride_px=2, extent=(X0 + 100, Y0 - 140, X0 + 160, Y0 - 100))  # cols 10..16, rows 10..14
    assert grid.out_window == Window(10, 10, 6, 4)
    acc = LogitAccumulator(grid, 1)
    for i, w in enumerate(grid.windows):
        acc.add(w, np.full((1, 4, 4), float(i), np.float32))
    assert isinstance(acc._dense_sum, np.memmap)
    out = acc.averaged(Window(0, 0, 6, 4))
    assert np.array_equal(out[0, 0], np.array([0, 0, 0.5, 0.5, 1, 1], np.float32))
    acc.add(Window(100, 100, 4, 4), np.zeros((1, 4, 4), np.float32))  # outside the output: ignored
    acc.close()
