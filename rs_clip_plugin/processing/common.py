"""What every RS-CLIP Processing algorithm shares: bundle resolution, feedback as engine progress,
and layer sources. The engine itself stages outputs and publishes them at the paths Processing asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
)

from ..engine.errors import RSClipError
from ..engine.progress import Progress

PROVIDERS = ["auto", "cpu", "cuda"]


def feedback_progress(feedback: Optional[QgsProcessingFeedback]) -> Progress:
    """The engine's progress-and-cancel interface on top of a Processing feedback."""
    if feedback is None:
        return Progress()
    last = {"msg": ""}

    def update(fraction: float, message: str) -> None:
        feedback.setProgress(100.0 * fraction)
        if message and message != last["msg"]:
            last["msg"] = message
            feedback.setProgressText(message)

    return Progress(update, feedback.isCanceled)


def load_bundle_spec(spec: str, feedback: Optional[QgsProcessingFeedback] = None):
    """'' (the default), an installed bundle's name, or a bundle folder / .zip -> engine Bundle."""
    from ..engine.bundle import BundleError, load_bundle
    from ..installed_bundles import ModelStore

    try:
        path = ModelStore().resolve((spec or "").strip())
        bundle = load_bundle(path)
    except BundleError as exc:
        raise QgsProcessingException(str(exc)) from exc
    if feedback is not None:
        feedback.pushInfo(f"Model bundle: {bundle.manifest.name} ({bundle.root})")
    return bundle


def layer_source(layer: Optional[QgsRasterLayer], what: str = "INPUT") -> Path:
    """The file (or folder) a raster layer reads; the engine reads it itself in windows."""
    if layer is None:
        raise QgsProcessingException(f"{what}: no raster layer given; choose a raster layer or give a raster file path")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{what}: layer {layer.name()!r} is a {layer.providerType()!r} layer; RS-CLIP reads local rasters "
            "(GeoTIFF, VRT, JP2, SAFE): export the layer to a GeoTIFF first"
        )
    src = layer.source().split("|")[0]
    from ..engine.sources import gdal_path

    remote = gdal_path(src)
    if remote is not None:  # /vsicurl/ COGs (QGIS STAC layers), /vsizip/...: kept as text, read by GDAL
        return remote  # type: ignore[return-value]
    p = Path(src)
    if not p.exists():
        raise QgsProcessingException(f"{what}: {src} does not exist on disk; save the layer to a file first")
    return p


def extent_tuple(rect: Optional[QgsRectangle]) -> Optional[tuple[float, float, float, float]]:
    if rect is None or rect.isNull() or rect.isEmpty():
        return None
    return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())


def engine_call(fn, *args, **kwargs):
    """Run an engine job: engine errors become QgsProcessingException with the engine's message (and fix)."""
    from ..engine.progress import Cancelled

    try:
        return fn(*args, **kwargs)
    except Cancelled as exc:
        raise QgsProcessingException("cancelled by the user; no output was written") from exc
    except QgsProcessingException:
        raise
    except RSClipError as exc:
        from .base import PARAMETER_NAMES

        raise QgsProcessingException(exc.render(PARAMETER_NAMES)) from exc
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise QgsProcessingException(str(exc)) from exc


def index_facts(index) -> dict:
    """Where an engine Index lives, how many tiles it holds, which provider embedded them, reused or not."""
    s = index.summary()
    return {"path": s["index"], "tiles": int(s["tiles"]), "provider": str(s.get("provider") or ""),
            "reused": bool(s.get("reused"))}
