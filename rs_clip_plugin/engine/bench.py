"""`rsclip bench`: throughput and memory figures, side by side in one run on the same bundle and batch.

- ``bare_images_per_s``: ``session.run`` in a loop on a preprocessed random batch (the encoder alone);
- ``pipeline_tiles_per_s``: ``embed_tiles`` on a real raster (read, resample, transform, resize, encode),
  same session and batch size, in steady state like the bare figure: the raster's tiles repeated in one run
  until it lasts ``min_seconds`` (``pipeline_passes``, ``pipeline_tiles_timed``); ``pipeline_over_bare`` is their ratio (1.0 = the
  pipeline never starves the encoder). ``pipeline_first_pass_tiles_per_s`` (and ``..._over_bare``) is one
  cold pass over the raster: worker start-up, file opening and first block decompression included;
- ``ort_images_per_s`` vs ``torch_images_per_s`` (open_clip eager, same threads, same batch) for the rgb
  tower when torch + open_clip are importable and the bundle names a model the factory can build;
  ``ort_over_torch`` the median of their ratios over TORCH_ROUNDS alternating rounds; the same at one image
  per call (``ort_ms_batch1``, ``torch_ms_batch1``, ``ort_over_torch_batch1``: an image query's latency);
  else ``torch_skipped`` says why;
- ``query_ms``: matrix-vector + argpartition top-10 over N random normalised embeddings (float32, the
  index's default storage) for each N, median of several repeats;
- ``peak_rss_mb``: the process's peak resident memory (``resource.getrusage``), query matrices included;
  ``pipeline_peak_rss_mb`` the peak up to the end of the pipeline figure (encoder + reading);
- ``large_scene`` (with ``large_scene=True``): a 10980 x 10980 px, 12-band Sentinel-2 scene made on the fly
  as VRTs that repeat the real Major-TOM band files, whose tiles (all of them, or a strip of ``rows``
  rows) are embedded as the labeller does; reports the tiles done and the peak RSS during it.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .bundle import Bundle, load_bundle
from .default_bundle import as_bundle
from .progress import Progress

QUERY_SIZES = (10_000, 100_000, 1_000_000)
LARGE_SCENE_PX = 10980


# ORT and torch are measured in this many alternating rounds (see interleaved_rates).
TORCH_ROUNDS = 5

def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB. Linux: VmHWM, which exec resets; ru_maxrss is not reset by
    exec (a fresh interpreter started by a big parent would report the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 1)


def _rate(fn, items_per_call: int, min_seconds: float, min_calls: int) -> tuple[float, int]:
    """Items per second of fn() over at least min_calls calls and min_seconds (after one warm-up call)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return items_per_call * calls / (time.perf_counter() - t0), calls


def query_latency_ms(n: int, dim: int, repeats: int = 5, k: int = 10, seed: int = 0) -> float:
    """Median ms of scores = E @ q and a top-k argpartition over n random L2-normalised float32 rows."""
    from .index import score_rows, top_k

    rng = np.random.default_rng(seed)
    emb = np.empty((n, dim), np.float32)
    for s in range(0, n, 1 << 16):  # generated in chunks: no float64 copy of the whole matrix
        block = rng.standard_normal((min(1 << 16, n - s), dim), dtype=np.float32)
        emb[s : s + block.shape[0]] = block / np.linalg.norm(block, axis=1, keepdims=True)
    q = emb[n // 2].copy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        top_k(score_rows(emb, q), k)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def _torch_encoder(bundle: Bundle, threads: int) -> tuple[Optional[Callable[[np.ndarray], Callable[[], object]]], str]:
    """A maker of calls running open_clip's eager ``encode_image`` on a batch, or None and why it cannot be built."""
    name = (bundle.manifest.provenance or {}).get("base_model")
    try:
        import torch

        from training.models.factory import create_model
    except ImportError as exc:
        return None, f"torch/open_clip not importable ({exc.name}); install the training extras"
    if not name:
        return None, "the bundle's provenance names no base model the factory can build"
    try:
        loaded = create_model(name)  # random or default weights: speed does not depend on them
    except Exception as exc:  # any factory failure is a reason to skip, reported as such
        return None, f"cannot build {name!r} in torch ({str(exc).splitlines()[0][:160]})"
    torch.set_num_threads(threads)
    model = loaded.model.eval()

    def on(batch: np.ndarray) -> Callable[[], object]:
        x = torch.from_numpy(batch)

        def run() -> object:
            with torch.inference_mode():
                return model.encode_image(x)

        return run

    return on, ""


def interleaved_rates(
    a: Callable[[], object], b: Callable[[], object], items: int, rounds: int, min_seconds: float, min_calls: int
) -> tuple[float, float, float]:
    """Median rates of a and b and the median of their per-round ratio, measured in alternating rounds.

    On a shared machine the speed drifts over seconds; alternating A, B, A, B ... puts both under the same
    drift, so the ratio is far steadier than two back-to-back measurements.
    """
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(_rate(a, items, min_seconds / rounds, max(1, min_calls // rounds))[0])
        rb.append(_rate(b, items, min_seconds / rounds, max(1, min_calls // rounds))[0])
    ratios = [x / y for x, y in zip(ra, rb)]
    return statistics.median(ra), statistics.median(rb), statistics.median(ratios)


def make_large_scene(band_dir: Path, out_dir: Path, size: int = LARGE_SCENE_PX) -> Path:
    """A folder of per-band VRTs, ``size`` px at 10 m (20/60 m bands at their own resolution), each tiling
    the real band file of ``band_dir`` over and over. Nothing is copied: the VRTs only reference the files."""
    from xml.sax.saxutils import escape

    import rasterio

    out_dir.mkdir(parents=True, exist_ok=True)
    for tif in sorted(band_dir.glob("B*.tif")):
        with rasterio.open(tif) as ds:
            w, h, t, dtype = ds.width, ds.height, ds.transform, ds.dtypes[0]
            crs_wkt = ds.crs.to_wkt()
        factor = abs(t.a) / 10.0  # 1 for 10 m bands, 2 for 20 m, 6 for 60 m
        n = round(size / factor)
        gdal_type = {"uint16": "UInt16", "uint8": "Byte", "int16": "Int16", "float32": "Float32"}[dtype]
        sources = []
        for r0 in range(0, n, h):
            for c0 in range(0, n, w):
                cw, ch = min(w, n - c0), min(h, n - r0)
                sources.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(tif.resolve()))}</SourceFilename>'
                    f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{cw}" ySize="{ch}"/>'
                    f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{cw}" ySize="{ch}"/></SimpleSource>'
                )
        gt = f"{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}"
        xml = (
            f'<VRTDataset rasterXSize="{n}" rasterYSize="{n}"><SRS>{escape(crs_wkt)}</SRS><GeoTransform>{gt}</GeoTransform>'
            f'<VRTRasterBand dataType="{gdal_type}" band="1"><NoDataValue>0</NoDataValue>{"".join(sources)}</VRTRasterBand>'
            "</VRTDataset>"
        )
        (out_dir / f"{tif.stem}.vrt").write_text(xml)
    return out_dir


def run_bench(
    bundle: Optional[Bundle | str | Path] = None,
    raster: Optional[Path | str] = None,
    *,
    batch_size: Optional[int] = None,
    provider: str = "auto",
    min_seconds: float = 3.0,
    min_calls: int = 3,
    max_tiles: Optional[int] = None,
    query_sizes: Sequence[int] = QUERY_SIZES,
    torch_compare: bool = True,
    large_scene: bool = False,
    large_scene_rows: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> dict:
    """All figures as one dict (see the module docstring); every key is present, skipped parts say why."""
    from .pipeline import choose_encoder
    from .raster import open_source
    from .runtime import EncoderSession
    from .settings import require_sample
    from .tiling import make_grid, tile_size_px_for

    progress = progress or Progress()
    b = as_bundle(bundle)
    raster_path = Path(raster) if raster is not None else next(p for p in sorted(require_sample("major_tom_s2l2a").iterdir()) if p.is_dir())
    result: dict = {"bundle": b.manifest.name, "raster": str(raster_path)}

    with open_source(raster_path) as src:
        spec = choose_encoder(b, src)
        modality = spec.modality
        session = EncoderSession(b, modality, provider=provider)
        bs = session.auto_batch_size(batch_size)
        result.update(modality=modality, provider=session.provider_used, device=session.device,
                      device_description=session.device_description, threads=session.threads,
                      batch_size=bs, input_size=spec.input_size, bands=len(spec.bands))
        progress.update(0.05, "bare encoder")
        rng = np.random.default_rng(0)
        batch = rng.standard_normal((bs, len(spec.bands), spec.input_size, spec.input_size), dtype=np.float32)
        bare, _ = _rate(lambda: session.run(batch), bs, min_seconds, min_calls)
        result["bare_images_per_s"] = round(bare, 2)

        progress.update(0.25, "pipeline")
        grid = make_grid(src, tile_size_px_for(spec, src))
        if max_tiles is not None:
            grid.windows = grid.windows[: int(max_tiles)]
        # Cold: one pass as a user's first run sees it (worker start, file open, first block decompression).
        first, first_s, _ = _pipeline_pass(src, b, modality, grid, session, bs)
        result["pipeline_first_pass_tiles_per_s"] = round(first / first_s, 2) if first_s > 0 else 0.0
        # Steady state, measured like the bare figure (warm, >= min_seconds): the raster's tiles repeated in
        # one run, so start-up is amortised as it is over a large scene.
        repeats = max(1, math.ceil(min_seconds * bare / max(len(grid.windows), 1)))
        grid.windows = grid.windows * repeats
        done, dt, stats = _pipeline_pass(src, b, modality, grid, session, bs)
        # Bare again right after: the pipeline is compared with the mean of the encoder before and after it,
        # so a shared machine's drift over the run affects both sides alike.
        bare_after, _ = _rate(lambda: session.run(batch), bs, min_seconds, min_calls)
        bare = (bare + bare_after) / 2
        result["bare_images_per_s"] = round(bare, 2)
        result["pipeline_tiles"] = first  # tiles of the raster embedded in one pass
        result["pipeline_passes"] = repeats
        result["pipeline_tiles_timed"] = done
        result["pipeline_tiles_per_s"] = round(done / dt, 2) if dt > 0 else 0.0
        result["pipeline_over_bare"] = round(result["pipeline_tiles_per_s"] / bare, 3) if bare > 0 else 0.0
        result["pipeline_first_pass_over_bare"] = round(result["pipeline_first_pass_tiles_per_s"] / bare, 3) if bare > 0 else 0.0
        result["pipeline_stats"] = stats.as_dict()
        # Peak so far: the encoder and the pipeline, before the torch model and the query matrices (1M x 512
        # float32 alone is 2 GB) raise the process's figure below.
        result["pipeline_peak_rss_mb"] = peak_rss_mb()

    progress.update(0.5, "ORT vs torch")
    result.update(ort_images_per_s=None, torch_images_per_s=None, ort_over_torch=None, ort_ms_batch1=None,
                  torch_ms_batch1=None, ort_over_torch_batch1=None, torch_skipped="")
    if torch_compare:
        if "rgb" not in b.manifest.modalities:
            result["torch_skipped"] = "the bundle has no rgb (CLIP visual) encoder to rebuild in torch"
        else:
            rgb = b.manifest.encoder("rgb")
            rgb_sess = session if modality == "rgb" else EncoderSession(b, "rgb", provider=provider)
            rgb_batch = rng.standard_normal((bs, 3, rgb.input_size, rgb.input_size), dtype=np.float32)
            torch_on, why = _torch_encoder(b, rgb_sess.threads)
            if torch_on is None:
                ort_rate, _ = _rate(lambda: rgb_sess.run(rgb_batch), bs, min_seconds, min_calls)
                result["ort_images_per_s"] = round(ort_rate, 2)
                result["torch_skipped"] = why
            else:
                ort_rate, torch_rate, ratio = interleaved_rates(
                    lambda: rgb_sess.run(rgb_batch), torch_on(rgb_batch), bs, TORCH_ROUNDS, 2 * min_seconds, min_calls
                )
                result["ort_images_per_s"] = round(ort_rate, 2)
                result["torch_images_per_s"] = round(torch_rate, 2)
                result["ort_over_torch"] = round(ratio, 3)
                # One image per call, as the search panel encodes an image query: latency, where per-call
                # overhead counts as much as the kernels.
                one = rgb_batch[:1]
                ort1, torch1, ratio1 = interleaved_rates(
                    lambda: rgb_sess.run(one), torch_on(one), 1, TORCH_ROUNDS, min_seconds, min_calls
                )
                result["ort_ms_batch1"] = round(1000 / ort1, 2)
                result["torch_ms_batch1"] = round(1000 / torch1, 2)
                result["ort_over_torch_batch1"] = round(ratio1, 3)
    else:
        result["torch_skipped"] = "not requested"

    progress.update(0.7, "query latency")
    result["query_ms"] = {str(n): query_latency_ms(int(n), b.manifest.embed_dim) for n in query_sizes}
    result["query_dim"] = b.manifest.embed_dim
    result["peak_rss_mb"] = peak_rss_mb()

    result["large_scene"] = None
    if large_scene:
        progress.update(0.8, "large scene")
        result["large_scene"] = large_scene_in_subprocess(b, raster_path, provider, bs, large_scene_rows)
    progress.update(1.0, "done")
    return result


def _pipeline_pass(src, b: Bundle, modality: str, grid, session, bs: int) -> tuple[int, float, object]:
    """(tiles embedded, seconds, TileStats) of one embed_tiles run, as the labeller drives it."""
    from .pipeline import TileStats, embed_tiles

    stats = TileStats()
    t0 = time.perf_counter()
    for _ in embed_tiles(src, b, modality, grid, session=session, batch_size=bs, stats=stats):
        pass
    return stats.embedded, time.perf_counter() - t0, stats


def large_scene_in_subprocess(b: Bundle, band_dir: Path, provider: str, bs: int, rows: Optional[int]) -> dict:
    """The large-scene figure from a fresh interpreter, so its peak RSS is the labelling's alone
    (not the torch model or the 1M-row query matrix this process has already held)."""
    import json
    import subprocess

    cmd = [sys.executable, "-m", "rs_clip_plugin.engine.bench", str(b.root), str(band_dir), provider, str(bs),
           str(rows if rows is not None else -1)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"large-scene benchmark failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _large_scene(b: Bundle, band_dir: Path, provider: str, bs: int, rows: Optional[int]) -> dict:
    from .pipeline import choose_encoder
    from .raster import open_source
    from .runtime import EncoderSession
    from .tiling import make_grid, tile_size_px_for

    with tempfile.TemporaryDirectory(prefix="rsclip-bench-scene-") as d:
        scene = make_large_scene(band_dir, Path(d) / "scene")
        with open_source(scene, sensor="s2-l2a") as src:
            spec = choose_encoder(b, src)
            modality = spec.modality
            grid = make_grid(src, tile_size_px_for(spec, src))
            per_row = len({int(w.col_off) for w in grid.windows})
            if rows is not None:
                grid.windows = grid.windows[: per_row * int(rows)]
            session = EncoderSession(b, modality, provider=provider)
            noise = np.random.default_rng(0).standard_normal(
                (bs, len(spec.bands), spec.input_size, spec.input_size), dtype=np.float32)
            bare, _ = _rate(lambda: session.run(noise), bs, 2.0, 3)  # the same session, for over_bare
            embedded, dt, stats = _pipeline_pass(src, b, modality, grid, session, bs)
            rate = embedded / dt if dt > 0 else 0.0
            return {
                "modality": modality,
                "batch_size": bs,
                "width": src.width,
                "height": src.height,
                "bands": len(src.band_names),
                "tiles": stats.embedded,
                "tile_rows": rows if rows is not None else "all",
                "seconds": round(dt, 2),
                "tiles_per_s": round(rate, 2),
                "bare_images_per_s": round(bare, 2),
                "over_bare": round(rate / bare, 3) if bare > 0 else 0.0,
                "pipeline_stats": stats.as_dict(),
                "peak_rss_mb": peak_rss_mb(),
                "target_rss_mb": 1536,
            }


if __name__ == "__main__":  # the large-scene worker of large_scene_in_subprocess
    import json

    _root, _dir, _provider, _bs, _rows = sys.argv[1:6]
    out = _large_scene(load_bundle(_root), Path(_dir), _provider, int(_bs), None if int(_rows) < 0 else int(_rows))
    print(json.dumps(out))
