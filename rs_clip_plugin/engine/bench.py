"""`rsclip bench`: throughput and memory figures, side by side in one run on the same bundle and batch.

- ``bare_images_per_s``: ``session.run`` in a loop on a preprocessed random batch (the encoder alone);
- ``pipeline_tiles_per_s``: ``embed_tiles`` on a real raster (read, resample, transform, resize, encode),
  same session and batch size, in steady state like the bare figure: the raster's tiles repeated in one run
  until it lasts ``min_seconds`` (``pipeline_passes``, ``pipeline_tiles_timed``), in ``PIPELINE_ROUNDS`` rounds
  alternating with the bare encoder (``pipeline_rounds``; the rates are the rounds' medians);
  ``pipeline_over_bare`` is the median of the rounds' ratios (1.0 = the pipeline never starves the encoder). ``pipeline_first_pass_tiles_per_s`` (and ``..._over_bare``) is one
  cold pass over the raster: worker start-up, file opening and first block decompression included;
- ``bare_peer_tiles_per_s``: the loop a user would otherwise write (as Deepness users compare against): the
  raster's tiles pre-cut to GeoTIFF files, each opened with rasterio, normalised, resized and run through a
  plain ONNX Runtime session of the same graph and threads, batch by batch with no read-ahead;
  ``pipeline_over_peer`` = pipeline / that peer;
- ``precision``: the graph the bare and pipeline figures ran (``--precision``; see runtime.choose_precision);
- ``ort_int8_images_per_s`` vs ``ort_fp32_images_per_s`` of the benchmarked encoder when the bundle has an
  int8 twin (``int8_over_fp32``, alternating rounds, each at its best thread count), and the int8 twin's
  agreement with fp32 recorded at export on real tiles (``int8_min_cosine``, ``int8_mean_cosine``,
  ``int8_label_agreement``); else ``int8_skipped`` says why;
- ``ort_images_per_s`` vs ``torch_images_per_s`` (open_clip eager fp32, same batch) for the rgb tower when
  torch + open_clip are importable and the bundle names a model the factory can build, EACH AT ITS BEST
  thread count (``thread_candidates`` tried, rates in ``*_images_per_s_by_threads``, the best in
  ``ort_threads`` / ``torch_threads``: torch with several threads pays milliseconds per operator on some
  machines, which is not ONNX Runtime's merit); ``ort_over_torch`` the median of their ratios over
  TORCH_ROUNDS alternating rounds; the same at one image per call (``ort_ms_batch1``, ``torch_ms_batch1``,
  ``ort_over_torch_batch1``: an image query's latency); else ``torch_skipped`` says why;
- ``tiles_per_s_by_workers``: the reader alone (read, transform, resize; no encoder) with 1, 2, 4, ...
  worker threads up to the cores (at least 1 and 2), each with its own raster handles as embed_tiles runs
  them; ``reader_workers`` the number embed_tiles used for the pipeline figure (``workers``, CLI ``--threads``;
  default: ``auto_workers``);
- ``query_ms``: matrix-vector + argpartition top-10 over N random normalised embeddings (float32, the
  index's default storage) for each N, median of several repeats;
- ``peak_rss_mb``: the process's peak resident memory (``resource.getrusage``), query matrices included;
  ``pipeline_peak_rss_mb`` the peak up to the end of the pipeline figure (encoder + reading);
- ``dense_vs_tile`` (unless ``dense_compare=False``): ``dense_vs_tile``: the same raster labelled in tile and
  in dense mode as whole ``classify`` jobs (fp32 both), their seconds and ``dense_over_tile``, and per map the
  tile-sized blocks whose labels are not uniform (in tile mode without overlap only where the last tile row or
  column overlaps the one before it);
- ``large_scene`` (with ``large_scene=True``): a 10980 x 10980 px, 12-band Sentinel-2 scene made on the fly
  as VRTs that repeat the real Major-TOM band files, whose tiles (all of them, or a strip of ``rows``
  rows) are embedded as the labeller does; reports the tiles done and the peak RSS during it.
"""

from __future__ import annotations

import math
import resource
import shutil
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
# The pipeline and the bare encoder likewise (run_bench).
PIPELINE_ROUNDS = 5

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


def thread_candidates(cores: Optional[int] = None) -> list[int]:
    """Thread counts tried for ORT and torch: 1, 2, 4, ... and the core count itself (1..cores on 2 cores)."""
    from .runtime import physical_cores

    cores = cores or physical_cores()
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return sorted({*out, cores})


def best_threads(make: Callable[[int], Callable[[], object]], items: int, candidates: Sequence[int], min_seconds: float,
                 min_calls: int) -> tuple[int, dict[str, float]]:
    """(thread count with the highest rate, rate per thread count) of the calls ``make(threads)`` returns."""
    rates = {}
    for t in candidates:
        rates[str(t)] = round(_rate(make(t), items, min_seconds / max(len(candidates), 1), max(1, min_calls // 2))[0], 2)
    best = max(candidates, key=lambda t: rates[str(t)])
    return best, rates


def reader_tiles_per_s(src, spec, grid, workers: int, bs: int, min_seconds: float) -> float:
    """Tiles/s of the pipeline's reader alone (embed_tiles' strip reads, transform, resize) with ``workers``
    threads, each on its own raster handles; the raster's tiles repeated until ``min_seconds`` have passed."""
    from concurrent.futures import ThreadPoolExecutor

    from .pipeline import _prepare, _Readers, work_units
    from .tiling import DEFAULT_MAX_NODATA

    batches = work_units(len(grid.windows), bs, spec)  # the units embed_tiles' readers prepare
    if not batches:
        return 0.0
    readers = _Readers(src, spec, share_source=False)

    def one(indices: Sequence[int]) -> int:
        prep = _prepare(readers, grid, spec, indices, DEFAULT_MAX_NODATA, False)
        return len(prep.indices) + len(prep.skipped)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsclip-bench-read") as pool:
            list(pool.map(one, batches[: max(workers, 1)]))  # warm-up: every worker opens its files
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < min_seconds:
                done += sum(pool.map(one, batches))
            dt = time.perf_counter() - t0
    finally:
        readers.close()
    return done / dt if dt > 0 else 0.0


def bare_peer_tiles_per_s(src, spec, grid, graph: Path, threads: int, bs: int, min_seconds: float,
                          max_tiles: int = 64) -> float:
    """Tiles/s of the loop a user writes without this engine: tiles pre-cut to GeoTIFFs (not timed), then for
    each batch: rasterio.open + read every tile file, normalise, resize, one plain ORT session.run."""
    import onnxruntime as ort
    import rasterio

    from .bundle import EMBEDDING_OUTPUT, IMAGE_INPUT
    from .pipeline import preprocess_tile

    windows = grid.windows[:max_tiles]
    with tempfile.TemporaryDirectory(prefix="rsclip-bench-peer-") as d:
        files = []
        for i, w in enumerate(windows):
            data = src.read_for(spec, w)  # physical values in the encoder's bands, as a tile export would hold
            path = Path(d) / f"tile_{i:04d}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                               count=data.shape[0], dtype="float32") as dst:
                dst.write(data.astype(np.float32))
            files.append(path)
        if not files:
            return 0.0
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])

        def one_pass() -> int:
            for s0 in range(0, len(files), bs):
                tiles = []
                for f in files[s0 : s0 + bs]:
                    with rasterio.open(f) as ds:
                        tiles.append(preprocess_tile(ds.read(), spec))
                sess.run([EMBEDDING_OUTPUT], {IMAGE_INPUT: np.stack(tiles)})
            return len(files)

        one_pass()  # warm-up
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            done += one_pass()
        dt = time.perf_counter() - t0
    return done / dt if dt > 0 else 0.0


def reader_worker_counts(cores: Optional[int] = None) -> list[int]:
    """1, 2, 4, ... up to the cores, always at least 1 and 2 (two threads on two cores still tells whether
    reading scales)."""
    return sorted({1, 2, *thread_candidates(cores)})


def run_bench(
    bundle: Optional[Bundle | str | Path] = None,
    raster: Optional[Path | str] = None,
    *,
    batch_size: Optional[int] = None,
    provider: str = "auto",
    precision: str = "auto",
    min_seconds: float = 3.0,
    min_calls: int = 3,
    max_tiles: Optional[int] = None,
    query_sizes: Sequence[int] = QUERY_SIZES,
    torch_compare: bool = True,
    large_scene: bool = False,
    large_scene_rows: Optional[int] = None,
    dense_compare: bool = True,
    workers: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> dict:
    """All figures as one dict (see the module docstring); every key is present, skipped parts say why."""
    from .pipeline import auto_workers, choose_encoder
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
        session = EncoderSession(b, modality, provider=provider, precision=precision)
        bs = session.auto_batch_size(batch_size)
        result.update(modality=modality, provider=session.provider_used, precision=session.precision_used,
                      device=session.device, device_description=session.device_description, threads=session.threads,
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
        workers = auto_workers(session.is_gpu) if workers is None else int(workers)
        first, first_s, _ = _pipeline_pass(src, b, modality, grid, session, bs, workers)
        result["pipeline_first_pass_tiles_per_s"] = round(first / first_s, 2) if first_s > 0 else 0.0
        # Steady state, measured like the bare figure (warm, >= min_seconds): the raster's tiles repeated in
        # one run, so start-up is amortised as it is over a large scene. PIPELINE_ROUNDS alternating rounds of
        # pipeline and bare encoder (the same session), the ratio the median of the rounds' ratios: a shared
        # machine's speed drifts over seconds, and alternating puts both sides under the same drift.
        rounds = PIPELINE_ROUNDS
        repeats = max(1, math.ceil(min_seconds * bare / rounds / max(len(grid.windows), 1)))
        grid.windows = grid.windows * repeats
        rates: list[float] = []
        bares: list[float] = []
        ratios: list[float] = []
        done_all, stats_all = 0, {}
        for _ in range(rounds):
            done, dt, stats = _pipeline_pass(src, b, modality, grid, session, bs, workers)
            rate = done / dt if dt > 0 else 0.0
            bare_r, _ = _rate(lambda: session.run(batch), bs, min_seconds / rounds, max(1, min_calls // rounds))
            rates.append(rate)
            bares.append(bare_r)
            ratios.append(rate / bare_r if bare_r > 0 else 0.0)
            done_all += done
            for k, v in stats.as_dict().items():
                stats_all[k] = v if k == "batch_size" else round(stats_all.get(k, 0) + v, 3)
        bare = statistics.median(bares)
        result["bare_images_per_s"] = round(bare, 2)
        result["pipeline_tiles"] = first  # tiles of the raster embedded in one pass
        result["pipeline_passes"] = repeats
        result["pipeline_rounds"] = rounds
        result["pipeline_tiles_timed"] = done_all
        result["pipeline_tiles_per_s"] = round(statistics.median(rates), 2)
        result["pipeline_over_bare"] = round(statistics.median(ratios), 3)
        result["pipeline_first_pass_over_bare"] = round(result["pipeline_first_pass_tiles_per_s"] / bare, 3) if bare > 0 else 0.0
        result["pipeline_stats"] = stats_all  # summed over the rounds
        result["reader_workers"] = workers
        progress.update(0.35, "reader scaling")
        del grid.windows[len(grid.windows) // repeats:]  # one pass of the raster again
        result["tiles_per_s_by_workers"] = {
            str(w): round(reader_tiles_per_s(src, spec, grid, w, bs, min_seconds / 2), 2)
            for w in reader_worker_counts()
        }
        progress.update(0.4, "bare ORT peer")
        graph = b.path(spec.twins()[session.precision_used])
        result["bare_peer_tiles_per_s"] = round(
            bare_peer_tiles_per_s(src, spec, grid, graph, session.threads, bs, min_seconds), 2)
        peer = result["bare_peer_tiles_per_s"]
        result["pipeline_over_peer"] = round(result["pipeline_tiles_per_s"] / peer, 3) if peer > 0 else 0.0
        # Peak so far: the encoder and the pipeline, before the torch model and the query matrices (1M x 512
        # float32 alone is 2 GB) raise the process's figure below.
        result["pipeline_peak_rss_mb"] = peak_rss_mb()

    candidates = thread_candidates()
    result["thread_candidates"] = candidates

    def ort_at(role: str, prec: str, x: np.ndarray) -> Callable[[int], Callable[[], object]]:
        def make(t: int) -> Callable[[], object]:
            s = EncoderSession(b, role, provider=provider, threads=t, precision=prec)
            return lambda: s.run(x)
        return make

    swept: dict[tuple[str, str], tuple[int, dict[str, float]]] = {}

    def ort_best(role: str, prec: str, x: np.ndarray) -> tuple[int, dict[str, float]]:
        """Best thread count of an ORT graph on batch ``x`` (each (role, precision) swept once per run)."""
        if (role, prec) not in swept:
            swept[role, prec] = best_threads(ort_at(role, prec, x), bs, candidates, min_seconds, min_calls)
        return swept[role, prec]

    progress.update(0.5, "int8 vs fp32")
    result.update(ort_fp32_images_per_s=None, ort_int8_images_per_s=None, int8_over_fp32=None, ort_int8_threads=None,
                  ort_fp32_threads=None,
                  int8_min_cosine=None, int8_mean_cosine=None, int8_label_agreement=None, int8_skipped="")
    if session.is_gpu:
        result["int8_skipped"] = "int8 twins are for the CPU; this run is on a GPU"
    elif not spec.onnx_int8:
        result["int8_skipped"] = f"the bundle's {modality!r} encoder has no int8 twin (re-export without --no-int8)"
    else:
        make32, make8 = ort_at(modality, "fp32", batch), ort_at(modality, "int8", batch)
        t32, _ = ort_best(modality, "fp32", batch)
        t8, _ = ort_best(modality, "int8", batch)
        r8, r32, ratio8 = interleaved_rates(make8(t8), make32(t32), bs, TORCH_ROUNDS, 2 * min_seconds, min_calls)
        result.update(ort_fp32_images_per_s=round(r32, 2), ort_int8_images_per_s=round(r8, 2),
                      int8_over_fp32=round(ratio8, 3), ort_int8_threads=t8, ort_fp32_threads=t32)
        rec = spec.int8_agreement or {}
        result.update(int8_min_cosine=rec.get("min_cosine"), int8_mean_cosine=rec.get("mean_cosine"),
                      int8_label_agreement=rec.get("label_agreement"), int8_tiles=rec.get("tiles"))

    progress.update(0.6, "ORT vs torch")
    result.update(ort_images_per_s=None, torch_images_per_s=None, ort_over_torch=None, ort_ms_batch1=None,
                  torch_ms_batch1=None, ort_over_torch_batch1=None, torch_skipped="", ort_threads=None,
                  torch_threads=None, ort_images_per_s_by_threads=None, torch_images_per_s_by_threads=None)
    if torch_compare:
        if "rgb" not in b.manifest.modalities:
            result["torch_skipped"] = "the bundle has no rgb (CLIP visual) encoder to rebuild in torch"
        else:
            rgb = b.manifest.encoder("rgb")
            rgb_batch = batch if modality == "rgb" else rng.standard_normal((bs, 3, rgb.input_size, rgb.input_size),
                                                                           dtype=np.float32)
            # torch runs fp32: ORT is compared at fp32 too (int8 has its own figure above).
            ort_make = ort_at("rgb", "fp32", rgb_batch)
            ort_t, ort_by_t = ort_best("rgb", "fp32", rgb_batch)
            result.update(ort_threads=ort_t, ort_images_per_s_by_threads=ort_by_t)
            torch_on, why = _torch_encoder(b, ort_t)
            if torch_on is None:
                ort_rate, _ = _rate(ort_make(ort_t), bs, min_seconds, min_calls)
                result["ort_images_per_s"] = round(ort_rate, 2)
                result["torch_skipped"] = why
            else:
                import torch

                def torch_make(t: int, x: np.ndarray = rgb_batch) -> Callable[[], object]:
                    run = torch_on(x)

                    def call() -> object:
                        torch.set_num_threads(t)  # set per call: the ORT rounds in between do not touch it
                        return run()

                    return call

                torch_t, torch_by_t = best_threads(torch_make, bs, candidates, min_seconds, min_calls)
                result.update(torch_threads=torch_t, torch_images_per_s_by_threads=torch_by_t)
                ort_rate, torch_rate, ratio = interleaved_rates(
                    ort_make(ort_t), torch_make(torch_t), bs, TORCH_ROUNDS, 2 * min_seconds, min_calls
                )
                result["ort_images_per_s"] = round(ort_rate, 2)
                result["torch_images_per_s"] = round(torch_rate, 2)
                result["ort_over_torch"] = round(ratio, 3)
                # One image per call, as the search panel encodes an image query: latency, where per-call
                # overhead counts as much as the kernels.
                one = rgb_batch[:1]
                ort1, torch1, ratio1 = interleaved_rates(
                    ort_at("rgb", "fp32", one)(ort_t), torch_make(torch_t, one), 1, TORCH_ROUNDS, min_seconds, min_calls
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

    result["dense_vs_tile"] = None
    if dense_compare:
        progress.update(0.75, "dense vs tile")
        result["dense_vs_tile"] = dense_vs_tile(b, raster_path, provider=provider, rounds=2)

    result["large_scene"] = None
    if large_scene:
        progress.update(0.8, "large scene")
        result["large_scene"] = large_scene_in_subprocess(b, raster_path, provider, bs, large_scene_rows, precision)
    progress.update(1.0, "done")
    return result


def nonuniform_blocks(labels: np.ndarray, block: int) -> tuple[int, int]:
    """(blocks whose labelled pixels hold more than one label, blocks with any labelled pixel) over the
    ``block`` x ``block`` squares of ``labels`` from its origin (0 = no data is ignored). In tile mode without
    overlap every tile-sized block is uniform (except where the last tile row or column, shifted to end at the
    raster's edge, overlaps the one before it); a label map whose edges fall inside tiles is not."""
    h, w = labels.shape
    mixed = total = 0
    for r in range(0, h, block):
        for c in range(0, w, block):
            v = labels[r:r + block, c:c + block]
            v = v[v > 0]
            if v.size:
                total += 1
                mixed += int(v.min() != v.max())
    return mixed, total


def dense_vs_tile(bundle: Bundle | str | Path | None, raster: Path | str, classes: Optional[Sequence[str]] = None, *,
                  provider: str = "auto", rounds: int = 3, keep: Optional[Path] = None,
                  progress: Optional[Progress] = None) -> dict:
    """Dense vs tile labelling of the same raster with the same bundle, classes, provider and precision (fp32:
    dense mode runs the fp32 graph), as a user runs ``rsclip classify --mode``: whole jobs timed in alternating
    rounds (best of ``rounds`` each, the first pair a warm-up), and the tile-sized blocks whose labels are not
    uniform in each map (``nonuniform_blocks``). ``keep``: a folder that receives the two outputs
    (``tile/``, ``dense/``) of the last round. Skipped with a reason when the chosen encoder has no dense outputs."""
    from .classify import classify_raster
    from .demo import eurosat_classes
    from .options import RunOptions, TilingOptions
    from .pipeline import choose_encoder
    from .raster import open_source

    progress = progress or Progress()
    b = as_bundle(bundle)
    with open_source(raster) as src:
        spec = choose_encoder(b, src)
    out: dict = {"modality": spec.modality, "skipped": "", "precision": "fp32"}
    if not spec.dense:
        out["skipped"] = f"the bundle's {spec.modality!r} encoder has no dense outputs (re-export it)"
        return out
    names = list(classes or eurosat_classes())
    run = RunOptions(provider=provider, precision="fp32")
    best: dict[str, float] = {}
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rsclip-bench-dense-") as d:
        for i in range(max(1, rounds) + 1):
            for mode in ("tile", "dense"):
                progress.check()
                target = Path(d) / f"{mode}-{i}"
                t = time.perf_counter()
                res = classify_raster(raster, names, target, bundle=b, tiling=TilingOptions(mode=mode), run=run)
                dt = time.perf_counter() - t
                if i:  # round 0 warms both sessions and the file cache
                    best[mode] = min(best.get(mode, math.inf), dt)
                summaries[mode] = {"summary": res.summary, "labels": res.labels_path}
            progress.update(i / (rounds + 1), f"dense vs tile, round {i + 1}")
        import rasterio

        for mode, s in summaries.items():
            with rasterio.open(s["labels"]) as ds:
                labels = ds.read(1)
            mixed, blocks = nonuniform_blocks(labels, int(s["summary"]["tiling"]["tile_px"]))
            out[mode] = {"seconds": round(best[mode], 3), "nonuniform_blocks": mixed, "blocks": blocks,
                         "mode_ran": s["summary"]["mode"], "tile_px": s["summary"]["tiling"]["tile_px"],
                         "overlap": s["summary"]["tiling"]["overlap"]}
            if keep is not None:
                dest = Path(keep) / mode
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(Path(s["labels"]).parent, dest)
        out["classes"] = names
        out["dense_variant"] = summaries["dense"]["summary"]["dense"]["variant"]
        out["dense_over_tile"] = round(best["dense"] / best["tile"], 3) if best["tile"] > 0 else None
    return out


def _pipeline_pass(src, b: Bundle, modality: str, grid, session, bs: int,
                   workers: Optional[int] = None) -> tuple[int, float, object]:
    """(tiles embedded, seconds, TileStats) of one embed_tiles run, as the labeller drives it."""
    from .pipeline import TileStats, embed_tiles

    stats = TileStats()
    t0 = time.perf_counter()
    for _ in embed_tiles(src, b, modality, grid, session=session, batch_size=bs, stats=stats, workers=workers):
        pass
    return stats.embedded, time.perf_counter() - t0, stats


def large_scene_in_subprocess(b: Bundle, band_dir: Path, provider: str, bs: int, rows: Optional[int],
                              precision: str = "auto") -> dict:
    """The large-scene figure from a fresh interpreter, so its peak RSS is the labelling's alone
    (not the torch model or the 1M-row query matrix this process has already held)."""
    import json
    import subprocess

    cmd = [sys.executable, "-m", "rs_clip_plugin.engine.bench", str(b.root), str(band_dir), provider, str(bs),
           str(rows if rows is not None else -1), precision]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"large-scene benchmark failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _large_scene(b: Bundle, band_dir: Path, provider: str, bs: int, rows: Optional[int], precision: str = "auto") -> dict:
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
            session = EncoderSession(b, modality, provider=provider, precision=precision)
            noise = np.random.default_rng(0).standard_normal(
                (bs, len(spec.bands), spec.input_size, spec.input_size), dtype=np.float32)
            bare, _ = _rate(lambda: session.run(noise), bs, 2.0, 3)  # the same session, for over_bare
            embedded, dt, stats = _pipeline_pass(src, b, modality, grid, session, bs)
            rate = embedded / dt if dt > 0 else 0.0
            return {
                "modality": modality,
                "batch_size": bs,
                "precision": session.precision_used,
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

    _root, _dir, _provider, _bs, _rows, _precision = sys.argv[1:7]
    out = _large_scene(load_bundle(_root), Path(_dir), _provider, int(_bs), None if int(_rows) < 0 else int(_rows),
                       _precision)
    print(json.dumps(out))
