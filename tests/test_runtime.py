"""ONNX Runtime sessions and the tile-embedding pipeline, on the tiny exported bundle and real rasters."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rs_clip_plugin.engine.pipeline import (
    TileStats,
    choose_encoder,
    embed_tiles,
    preprocess_tile,
    resize_chw,
)
from rs_clip_plugin.engine.progress import Cancelled, Progress
from rs_clip_plugin.engine.raster import RasterError, open_source
from rs_clip_plugin.engine.runtime import (
    CPU,
    CUDA,
    EncoderSession,
    _tidy_cpu_name,
    auto_batch_size,
    available_devices,
    available_providers,
    cpu_model,
    describe_device,
    resolve_providers,
)
from rs_clip_plugin.engine.tiling import make_grid


def test_provider_resolution() -> None:
    avail = available_providers()
    assert CPU in avail
    assert resolve_providers("cpu") == [CPU]
    auto = resolve_providers("auto")
    assert auto[-1] == CPU
    with pytest.raises(ValueError, match="auto, cuda, cpu"):
        resolve_providers("tpu")


def test_session_runs_reports_provider_and_is_shared(bundle) -> None:
    # fp32: the exactness checks below are about the fp32 graph (int8's dynamic activation scale is per batch,
    # so an int8 row depends slightly on its batch-mates; tests/test_precision.py covers int8).
    s = EncoderSession(bundle, "rgb", provider="cpu", threads=1, precision="fp32")
    x = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    raw = s.run(x)
    emb = s.embed(x)
    assert raw.shape == (5, bundle.manifest.embed_dim) and raw.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert s.provider_used == CPU and s.fallback_message is None and s.device
    # A second session for the same encoder reuses the ONNX Runtime session (no second graph optimisation).
    s2 = EncoderSession(bundle, "rgb", provider="cpu", threads=1, precision="fp32")
    assert s2._ensure()[0] is s._ensure()[0]
    # ... also when asked differently for the same graph: dense mode on auto runs the fp32 graph on a CPU
    assert bundle.manifest.encoder("rgb").dense
    dense = EncoderSession(bundle, "rgb", provider="cpu", threads=1, precision="auto", dense=True)
    assert dense._ensure()[0] is s._ensure()[0] and dense.precision_used == "fp32"
    assert s.run(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, bundle.manifest.embed_dim)
    # Batch rows are independent: embedding one tile alone gives the same vector as within the batch.
    np.testing.assert_allclose(s.embed(x[2:3])[0], emb[2], atol=1e-5)


def test_cuda_request_falls_back_to_cpu_with_a_message(bundle) -> None:
    s = EncoderSession(bundle, "rgb", provider="cuda", threads=1)
    out = s.embed(np.zeros((1, 3, 64, 64), np.float32))
    assert out.shape == (1, bundle.manifest.embed_dim)
    if CUDA in available_providers() and s.provider_used == CUDA:
        assert s.fallback_message is None
    else:
        assert s.provider_used == CPU
        assert "CUDA" in s.fallback_message and "CPU" in s.fallback_message


def test_device_is_described_for_people(bundle, monkeypatch) -> None:
    """Issue 10 defect 9 / issue 15: 'CPU (model, N threads)' / 'GPU (model, CUDA)', never raw provider names,
    never ONNX Runtime's 'Azure' pseudo-provider; the raw provider stays in summary.json beside it."""
    s = EncoderSession(bundle, "rgb", provider="cpu", threads=2)
    text = s.device_description
    assert re.fullmatch(r"CPU \(.+, 2 threads\)", text) and "ExecutionProvider" not in text
    assert cpu_model() in text and "(R)" not in text and "@" not in text
    if Path("/proc/cpuinfo").is_file():  # Linux: the model the kernel reports, tidied
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        assert cpu_model().split()[0] in line
    assert describe_device(CPU, 1, model="Apple M2") == "CPU (Apple M2, 1 thread)"
    assert describe_device(CUDA, model="NVIDIA H100 80GB HBM3") == "GPU (NVIDIA H100 80GB HBM3, CUDA)"
    for raw, tidy in (("Intel(R) Xeon(R) Platinum 8480+", "Intel Xeon Platinum 8480+"),
                      ("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", "Intel Core i7-8650U"),
                      ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763")):
        assert _tidy_cpu_name(raw) == tidy
    avail = available_devices()
    assert avail.startswith(("CPU (", "GPU (")) and "Azure" not in avail and "ExecutionProvider" not in avail
    fallback = EncoderSession(bundle, "rgb", provider="cuda", threads=1)
    if fallback.provider_used == CPU:
        assert "Azure" not in fallback.fallback_message and "CPU (" in fallback.fallback_message


def test_text_session_and_missing_encoder(bundle) -> None:
    t = EncoderSession(bundle, "text", provider="cpu", threads=1)
    ids = np.zeros((2, bundle.manifest.text.context_length), np.int64)
    ids[:, 0], ids[:, 1] = bundle.manifest.text.sot_id, bundle.manifest.text.eot_id
    assert t.embed(ids).shape == (2, bundle.manifest.embed_dim)
    with pytest.raises(ValueError, match="no 's1-grd' encoder"):
        EncoderSession(bundle, "s1-grd")


def test_auto_batch_size() -> None:
    assert auto_batch_size(224, 3, CPU, requested=7) == 7
    with pytest.raises(ValueError, match="at least 1"):
        auto_batch_size(224, 3, CPU, requested=0)
    cpu = auto_batch_size(224, 3, CPU)
    gpu = auto_batch_size(224, 3, CUDA)
    assert 4 <= cpu <= 64 and cpu & (cpu - 1) == 0
    assert gpu > cpu
    assert auto_batch_size(64, 3, CPU) >= cpu  # smaller inputs, more per batch


def test_resize_chw_area_and_bilinear() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((2, 8, 8), dtype=np.float32)
    down = resize_chw(x, 4)
    np.testing.assert_allclose(down, x.reshape(2, 4, 2, 4, 2).mean(axis=(2, 4)), atol=1e-6)
    assert resize_chw(x, 8) is x
    const = np.full((1, 5, 5), 3.0, np.float32)
    np.testing.assert_allclose(resize_chw(const, 12), 3.0, atol=1e-6)
    up = resize_chw(np.arange(4, dtype=np.float32).reshape(1, 1, 4).repeat(4, axis=1), 8)
    assert np.all(np.diff(up[0, 0]) >= 0)  # monotone ramp stays monotone


def _rgb_with_nodata(path: Path, size: int = 128) -> Path:
    rng = np.random.default_rng(2)
    data = rng.integers(1, 255, size=(3, size, size), dtype=np.uint8)
    data[:, :, : size // 2 + 8] = 0  # left half (and a bit) is no data
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as ds:
        ds.write(data)
    return path


def test_embed_tiles_matches_direct_inference_and_skips_nodata(bundle, tmp_path: Path) -> None:
    src = open_source(_rgb_with_nodata(tmp_path / "rgb.tif"))
    assert choose_encoder(bundle, src).modality == "rgb"
    spec = bundle.manifest.encoder("rgb")
    grid = make_grid(src, 32)  # 4 x 4 tiles of 32 px, resized to the encoder's 64 px
    s = EncoderSession(bundle, "rgb", provider="cpu", threads=1, precision="fp32")  # exact: batch-independent
    stats = TileStats(keep_masks=True)
    got = {}
    for idx, emb in embed_tiles(src, bundle, None, grid, session=s, batch_size=3, stats=stats, workers=2):
        got.update(zip(idx, emb))
    # Columns 0-1 are all no data (skipped); column 2 is 8/32 no data (kept, with its mask).
    assert sorted(stats.skipped) == [r * 4 + c for r in range(4) for c in (0, 1)]
    assert sorted(got) == [r * 4 + c for r in range(4) for c in (2, 3)]
    assert sorted(stats.partial_masks) == [r * 4 + 2 for r in range(4)]
    assert stats.partial_masks[2][:, :8].all() and not stats.partial_masks[2][:, 8:].any()
    assert stats.embedded == 8 and stats.total == 16 and stats.batch_size == 3
    # Hand check of one tile: read in encoder units, transform, resize, encode.
    tile = src.read_for(spec, grid.windows[7])
    direct = s.embed(preprocess_tile(tile, spec)[None])[0]
    np.testing.assert_allclose(got[7], direct, atol=1e-5)
    # Reading in the calling thread gives the same embeddings as the worker threads.
    same = dict(kv for idx, emb in embed_tiles(src, bundle, "rgb", grid, session=s, workers=0) for kv in zip(idx, emb))
    for i in got:
        np.testing.assert_allclose(same[i], got[i], atol=1e-6)
    src.close()


def test_embed_tiles_cancel_and_progress(bundle, major_tom_dir: Path) -> None:
    src = open_source(major_tom_dir)
    grid = make_grid(src, 64, extent=(src.bounds[0], src.bounds[3] - 2560, src.bounds[0] + 2560, src.bounds[3]))
    s = EncoderSession(bundle, "rgb", provider="cpu", threads=1)
    seen: list[float] = []
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        for _ in embed_tiles(src, bundle, "rgb", grid, session=s, batch_size=2, progress=Progress(lambda f, m: seen.append(f), cancelled)):
            pass
    assert seen and seen[0] == 0.0 and max(seen) < 1.0
    seen.clear()
    n = sum(len(i) for i, _ in embed_tiles(src, bundle, "rgb", grid, session=s, batch_size=4, progress=Progress(lambda f, m: seen.append(f))))
    assert n == len(grid) == 16 and seen[-1] == 1.0
    src.close()


def test_unmappable_source_fails_before_reading(bundle, data_dir: Path) -> None:
    s1 = next((data_dir / "bigearthnet_v1" / "BigEarthNet-S1").iterdir())
    src = open_source(next(s1.iterdir()))
    with pytest.raises(RasterError, match="rgb"):
        choose_encoder(bundle, src)
    src.close()


def test_spinning_setting_is_validated(monkeypatch) -> None:
    from rs_clip_plugin.engine.runtime import _session_options

    monkeypatch.setenv("RSCLIP_ORT_SPINNING", "1")
    assert _session_options(1).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    monkeypatch.delenv("RSCLIP_ORT_SPINNING")
    assert _session_options(1).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("RSCLIP_ORT_SPINNING", "yes")
    with pytest.raises(ValueError, match="RSCLIP_ORT_SPINNING"):
        _session_options(1)


def test_cache_folders_follow_platform_conventions(tmp_path: Path, monkeypatch) -> None:
    """platformdirs conventions (issue 15): $XDG_CACHE_HOME on Linux, the old ~/.cache/rsclip by default;
    RSCLIP_CACHE and RSCLIP_DEFAULT_BUNDLE_HOME still override."""
    import sys

    from rs_clip_plugin.engine.default_bundle import default_bundle_home
    from rs_clip_plugin.engine.settings import cache_dir, user_cache_root

    monkeypatch.setenv("RSCLIP_CACHE", str(tmp_path / "override"))
    assert cache_dir() == tmp_path / "override"
    monkeypatch.delenv("RSCLIP_CACHE")
    monkeypatch.delenv("RSCLIP_DEFAULT_BUNDLE_HOME", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the XDG convention is Linux's")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == user_cache_root() == tmp_path / "xdg" / "rsclip"
    assert default_bundle_home() == tmp_path / "xdg" / "rsclip" / "default-bundle"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "rsclip"  # the folder earlier versions used
