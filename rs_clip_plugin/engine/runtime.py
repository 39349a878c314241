"""ONNX Runtime sessions for a bundle's encoders: provider choice, CPU fallback, precision, batch size.

One ``onnxruntime.InferenceSession`` per (bundle content, encoder, provider, threads, precision) is built
the first time it is needed and then shared by every ``EncoderSession`` asking for the same thing, so a
plugin that labels ten rasters in a row pays the graph optimisation once. The provider that actually
runs is reported (``provider_used``, ``device``): Deepness users could not tell whether their GPU was used.
So is the precision (``precision_used``): a bundle holds an fp32 graph per encoder and optionally fp16 and
int8 twins; ``choose_precision`` is the one rule that picks among them (see PRECISION_CHOICES).
``describe_device`` is the one wording of it for people ("CPU (Intel Xeon Platinum 8480+, 2 threads)",
"GPU (NVIDIA H100, CUDA)"), used by the CLI, the GUI and summary.json beside the raw provider name.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from .bundle import EMBEDDING_OUTPUT, IMAGE_INPUT, TEXT_INPUT, Bundle, BundleError
from .errors import InputError
from .settings import cache_dir

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cuda", "cpu")
# auto: int8 on the CPU when the bundle recorded int8 labels agreeing with fp32 on >= INT8_MIN_AGREEMENT of
# real tiles (measured at export), fp16 on a GPU when there is a twin, else fp32. An explicit precision is
# honoured or refused (the bundle lacks that twin); it never silently becomes another.
PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8")
INT8_MIN_AGREEMENT = 0.99
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
TEXT_ROLE = "text"

_sessions: dict[tuple, tuple] = {}
_sessions_lock = threading.Lock()


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _plan(provider: str) -> tuple[list[str], Optional[str]]:
    """Providers to try, in order, and a message when the request cannot be honoured as asked."""
    if provider not in PROVIDER_CHOICES:
        raise ValueError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDER_CHOICES)}")
    avail = available_providers()
    if provider == "cpu":
        return [CPU], None
    if provider == "auto":
        return [p for p in (TENSORRT, CUDA) if p in avail] + [CPU], None
    if CUDA in avail:
        return [CUDA, CPU], None
    return [CPU], (
        f"a GPU was requested but this ONNX Runtime has no CUDA support; running on {describe_device(CPU)}. "
        "Install onnxruntime-gpu to use an NVIDIA GPU."
    )


def resolve_providers(provider: str = "auto") -> list:
    """ONNX Runtime provider list for 'auto' (TensorRT > CUDA > CPU), 'cuda' (CPU fallback) or 'cpu'."""
    names, message = _plan(provider)
    if message:
        log.warning(message)
    out: list = []
    for name in names:
        if name == TENSORRT:
            # Engines take minutes to build; caching them makes the second run start fast.
            trt_cache = cache_dir() / "tensorrt"
            out.append((TENSORRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache),
                                   "trt_fp16_enable": True}))
        else:
            out.append(name)
    return out


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads slow ORT's intra-op pool down, not up.

    psutil (maintained, all platforms) counts them when importable; it is not a plugin dependency, so
    /proc/cpuinfo is read otherwise (Linux; elsewhere the logical count is the bound)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # not installed, or no answer on this platform
        physical = None
    if physical:
        return max(1, min(int(physical), allowed))
    cores = set()
    try:
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) if cores else allowed
    return max(1, min(n, allowed))


def default_threads() -> int:
    env = os.environ.get("RSCLIP_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise ValueError(f"RSCLIP_THREADS={env!r} is not a whole number of threads") from exc
    return physical_cores()


def device_name(provider: str) -> str:
    """The model of the device a provider runs on: the GPU's from the NVIDIA driver, else the CPU's."""
    if provider in GPU_PROVIDERS:
        return gpu_model() or "NVIDIA GPU"
    return cpu_model()


# Provider -> how the device is driven, in the words users know; providers not listed here (e.g. Azure,
# which ONNX Runtime lists as "available" although it is a remote-endpoint shim) are never shown.
_DEVICE_WORDS = {CUDA: ("GPU", "CUDA"), TENSORRT: ("GPU", "TensorRT"), CPU: ("CPU", None)}


def describe_device(provider: str, threads: Optional[int] = None, model: Optional[str] = None) -> str:
    """The device a job runs on, for people: 'CPU (Intel Xeon Platinum 8480+, 2 threads)',
    'GPU (NVIDIA H100 80GB HBM3, CUDA)'. ``model`` defaults to the detected one (``device_name``)."""
    kind, api = _DEVICE_WORDS.get(provider, ("CPU", None))
    name = model or device_name(provider)
    if kind == "GPU":
        return f"GPU ({name}, {api})"
    n = threads or default_threads()
    return f"CPU ({name}, {n} thread{'s' if n != 1 else ''})"


def available_devices() -> str:
    """What this ONNX Runtime can run on, for people (the model manager's and the dialogs' status line):
    'GPU (NVIDIA H100, CUDA), or CPU (AMD EPYC, 2 threads)' or the CPU alone with how to add the GPU."""
    avail = available_providers()
    gpus = [describe_device(p) for p in (CUDA, TENSORRT) if p in avail]
    cpu = describe_device(CPU)
    if gpus:
        return f"{gpus[0]}, or {cpu}"
    hint = "; install onnxruntime-gpu to use an NVIDIA GPU" if gpu_model() else ""
    return cpu + hint


def _tidy_cpu_name(raw: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz' -> 'Intel Xeon Platinum 8480+'."""
    name = re.sub(r"\((R|TM|tm|r)\)", "", raw)
    name = re.sub(r"\s+@\s*[\d.]+\s*[GM]Hz", "", name)
    name = re.sub(r"\s+(CPU|Processor)$", "", name.strip())
    name = re.sub(r"\s+\d+-Core$", "", name)
    return " ".join(name.split()) or raw.strip()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name ('Intel Xeon Platinum 8480+', 'Apple M2', 'AMD EPYC 7763'), read once.

    ONNX Runtime has no API for it. py-cpuinfo, the maintained library, answers ``get_cpu_info()`` by
    starting ``sys.executable`` on its own module: inside QGIS that can be QGIS itself or another
    interpreter (the reason the dependency installer must not trust it either), and it takes 1-3 s. So each
    platform's own source is read here: /proc/cpuinfo (Linux), sysctl (macOS), the registry (Windows).
    """
    raw = ""
    try:
        if sys.platform.startswith("linux"):
            for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model") and ":" in line:
                    raw = line.split(":", 1)[1].strip()
                    break
        elif sys.platform == "darwin":
            raw = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        elif sys.platform == "win32":
            import winreg

            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0") as key:
                raw = str(winreg.QueryValueEx(key, "ProcessorNameString")[0])
    except (OSError, subprocess.SubprocessError):
        raw = ""
    return _tidy_cpu_name(raw) if raw else (platform.processor() or platform.machine() or "unknown model")


@functools.lru_cache(maxsize=1)
def gpu_model() -> Optional[str]:
    """The first NVIDIA GPU's name from the driver (Linux /proc, else nvidia-smi), or None without one."""
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            continue
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return names[0] if out.returncode == 0 and names else None


def auto_batch_size(input_size: int, channels: int = 3, provider: str = CPU, requested: Optional[int] = None) -> int:
    """Tiles per inference call: an explicit request wins; else a power of two sized to the device.

    On the CPU a batch whose input fits in a few MiB of cache keeps the matmuls hot; GPUs want large
    batches to fill their cores (bounded so the activations of a ViT-L still fit).
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"batch size must be at least 1, got {requested}")
        return int(requested)
    per_image = max(1, input_size * input_size * channels * 4)
    if provider in GPU_PROVIDERS:
        budget, lo, hi = 192 << 20, 16, 256
    else:
        budget, lo, hi = 6 << 20, 4, 64
    n = max(1, budget // per_image)
    n = 1 << (n.bit_length() - 1)
    return int(min(max(n, lo), hi))


def _session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's own warnings (e.g. unused initialisers) are noise to a GIS user
    # Idle intra-op threads otherwise spin on the cores the raster readers need: on 2 cores this took the
    # 12-band pipeline from ~800 to ~1280 tiles/s (measured side by side with rsclip bench --large-scene).
    spinning = os.environ.get("RSCLIP_ORT_SPINNING", "0")
    if spinning not in ("0", "1"):
        raise ValueError(f"RSCLIP_ORT_SPINNING={spinning!r}: use 0 (default) or 1")
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return so


def choose_precision(
    precision: str, twins: dict[str, Optional[str]], int8_agreement: Optional[float], gpu: bool, what: str = "encoder"
) -> tuple[str, str]:
    """(precision, graph file) for a request: ``twins`` maps fp32/fp16/int8 to a bundle file or None,
    ``int8_agreement`` is the label agreement recorded for the int8 twin, ``gpu`` whether a GPU provider runs it."""
    if precision not in PRECISION_CHOICES:
        raise InputError(f"{{precision}} {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        if gpu and twins.get("fp16"):
            precision = "fp16"
        elif (not gpu and twins.get("int8") and int8_agreement is not None
              and int8_agreement >= INT8_MIN_AGREEMENT):
            precision = "int8"
        else:
            precision = "fp32"
    rel = twins.get(precision)
    if not rel:
        have = ", ".join(k for k, v in twins.items() if v)
        raise BundleError(
            f"the {what} has no {precision} graph (it has: {have}); set {{precision}} to auto or fp32, or re-export "
            f"the bundle with rsclip-train export (it writes int8 twins by default, fp16 with --fp16)"
        )
    return precision, rel


def _create(path: Path, providers: list, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=_session_options(threads), providers=providers)


class EncoderSession:
    """The ONNX Runtime session of one encoder of a bundle ('text' or an image modality)."""

    def __init__(
        self,
        bundle: Bundle,
        role: str,
        provider: str = "auto",
        threads: Optional[int] = None,
        fp16: Optional[bool] = None,
        precision: str = "auto",
        dense: bool = False,
    ) -> None:
        """``precision``: auto|fp32|fp16|int8 (see PRECISION_CHOICES). ``fp16`` is the earlier spelling:
        True = fp16, False = fp32, and only applies when ``precision`` is auto.

        ``dense``: the session serves ``embed_dense`` (patch outputs, see bundle.PATCH_OUTPUT). The int8 twin is
        then not used: quantisation was measured on the pooled output only, so dense mode runs the fp32 graph
        (fp16 on a GPU when there is a twin); asking for int8 is refused."""
        self.bundle = bundle
        self.role = role
        self.provider = provider
        self.threads = int(threads) if threads else default_threads()
        if fp16 is not None and precision == "auto":
            precision = "fp16" if fp16 else "fp32"
        self.precision = precision
        m = bundle.manifest
        if role == TEXT_ROLE:
            self.input_name = TEXT_INPUT
            self._twins: dict[str, Optional[str]] = {"fp32": m.text.onnx, "fp16": m.text.onnx_fp16, "int8": None}
            self._int8_agreement: Optional[float] = None
            self.spec = None
        else:
            self.spec = m.encoder(role)
            self.input_name = IMAGE_INPUT
            self._twins = self.spec.twins()
            self._int8_agreement = self.spec.int8_label_agreement
        self.dense = bool(dense)
        self._what = f"{role!r} encoder of bundle {m.name!r}"
        if self.dense:
            if self.spec is None or not self.spec.dense:
                raise BundleError(f"the {self._what} has no dense outputs; use tile mode or re-export the bundle "
                                  "with rsclip-train export (an open_clip ViT gets them by default)")
            if precision == "int8":
                raise InputError("dense mode runs the fp32 graph (its int8 twin was measured on pooled embeddings "
                                 "only); set {precision} to auto or fp32, or use {mode} tile for int8")
            self._twins = {**self._twins, "int8": None}
            self._what = f"dense outputs of the {self._what}"
        self._names, self._plan_message = _plan(provider)
        # Checked now, so a bundle without the requested twin fails before any raster is opened.
        self.planned_precision = choose_precision(precision, self._twins, self._int8_agreement,
                                                  self._names[0] in GPU_PROVIDERS, self._what)[0]
        self._state: Optional[tuple] = None

    # -- session creation (lazy, shared) -------------------------------------------------------------
    def _ensure(self) -> tuple:
        if self._state is not None:
            return self._state
        # Keyed by the graph file that will run, not by what was asked: fp32 asked for tile mode and auto in
        # dense mode (or a search after a classify) load the same graph once.
        key = (self.bundle.digest, self.role, self.provider, self.threads, self._twins.get(self.planned_precision))
        with _sessions_lock:
            state = _sessions.get(key)
            if state is None:
                state = self._build()
                _sessions[key] = state
        self._state = state
        return state

    def _build(self) -> tuple:
        providers = resolve_providers(self.provider)
        message = self._plan_message
        gpu = any((p[0] if isinstance(p, tuple) else p) in GPU_PROVIDERS for p in providers)
        precision, rel = choose_precision(self.precision, self._twins, self._int8_agreement, gpu, self._what)
        try:
            sess = _create(self.bundle.path(rel), providers, self.threads)
        except Exception as exc:
            if not gpu:
                raise BundleError(f"{self.bundle.path(rel)}: ONNX Runtime cannot load this graph ({exc}); re-export the bundle") from exc
            message = f"the GPU provider could not start ({str(exc).splitlines()[0][:200]}); running on the CPU instead"
            precision, rel = choose_precision(self.precision, self._twins, self._int8_agreement, False, self._what)
            sess = _create(self.bundle.path(rel), [CPU], self.threads)
        used = sess.get_providers()[0]
        if gpu and used == CPU and message is None:
            # ORT silently drops a provider whose libraries (CUDA, cuDNN) fail to load.
            message = (
                "a GPU provider was available but could not start (CUDA/cuDNN libraries missing or no device); "
                "running on the CPU"
            )
        if message and message != self._plan_message:
            log.warning(message)
        inp = sess.get_inputs()[0]
        dtype = np.float16 if "float16" in inp.type else (np.int64 if "int64" in inp.type else np.float32)
        return sess, used, message, dtype, rel, precision

    # -- what is running ----------------------------------------------------------------------------
    @property
    def provider_used(self) -> str:
        return self._ensure()[1]

    @property
    def precision_used(self) -> str:
        """fp32, fp16 or int8: the graph that runs (reported beside ``provider_used``)."""
        return self._ensure()[5]

    @property
    def device(self) -> str:
        return device_name(self.provider_used)

    @property
    def device_description(self) -> str:
        """The device for people, e.g. 'CPU (AMD EPYC, 2 threads)' (see ``describe_device``)."""
        return describe_device(self.provider_used, self.threads)

    @property
    def fallback_message(self) -> Optional[str]:
        return self._ensure()[2]

    @property
    def is_gpu(self) -> bool:
        return self.provider_used in GPU_PROVIDERS

    def auto_batch_size(self, requested: Optional[int] = None) -> int:
        if self.spec is None:
            return auto_batch_size(16, 1, self.provider_used, requested)
        return auto_batch_size(self.spec.input_size, len(self.spec.bands), self.provider_used, requested)

    # -- inference -----------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw embeddings [N, D] float32 for a batch of encoder inputs (or token ids for 'text')."""
        sess, _, _, dtype, _, _ = self._ensure()
        x = np.ascontiguousarray(batch, dtype=dtype)
        if x.shape[0] == 0:
            return np.zeros((0, self.bundle.manifest.embed_dim), np.float32)
        out = sess.run([EMBEDDING_OUTPUT], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings [N, D]."""
        return l2_normalise(self.run(batch))

    def embed_dense(self, batch: np.ndarray) -> DenseEmbeddings:
        """Pooled [N, D], patch [N, P, D] and dense class-token [N, D] embeddings, all L2-normalised, from one
        run of the graph (a session made with ``dense=True``)."""
        if not self.dense or self.spec is None or not self.spec.dense:
            raise ValueError("embed_dense needs a session made with dense=True for an encoder with dense outputs")
        sess, _, _, dtype, _, _ = self._ensure()
        x = np.ascontiguousarray(batch, dtype=dtype)
        names = self.spec.dense["outputs"]
        if x.shape[0] == 0:
            d = self.bundle.manifest.embed_dim
            gh, gw = self.spec.dense_grid or (0, 0)
            return DenseEmbeddings(np.zeros((0, d), np.float32), np.zeros((0, gh * gw, d), np.float32),
                                   np.zeros((0, d), np.float32))
        pooled, patches, cls = sess.run([EMBEDDING_OUTPUT, names["patches"], names["cls"]], {self.input_name: x})
        return DenseEmbeddings(l2_normalise(pooled), l2_normalise(patches), l2_normalise(cls))


class DenseEmbeddings(NamedTuple):
    """What a dense encoder run gives per batch (each L2-normalised)."""

    pooled: np.ndarray  # [N, D]
    patches: np.ndarray  # [N, P, D], P = rows * cols of the manifest's dense grid, row-major
    cls: np.ndarray  # [N, D], the class token of the modified last block


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, np.float32(1e-12))


def clear_session_cache() -> None:
    """Forget every shared session (frees their memory; the next use builds them again)."""
    with _sessions_lock:
        _sessions.clear()
