"""Styling engine outputs as QGIS layers, for the GUI and the Processing post-processors (main thread only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import (
    QgsColorRampShader,
    QgsLayerTreeGroup,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor


def provider_label(provider: Optional[str], device: Optional[str] = None, threads: Optional[int] = None) -> str:
    """Where a job ran, in an analyst's words (engine.runtime.describe_device): 'GPU (NVIDIA H100, CUDA)' or
    'CPU (Intel Xeon ..., 2 threads)'; raw provider names (CPUExecutionProvider, Azure...) mean nothing to a user."""
    if not provider:
        return "not run yet"
    try:
        from .engine.runtime import describe_device

        return describe_device(provider, threads=threads, model=device)
    except Exception:  # the label must never break showing a result
        return provider.replace("ExecutionProvider", "")


OUTPUT_PROPERTY = "rsclip/output"  # layer custom property: which RS-CLIP result a layer shows


def mark_output(layer, kind: str) -> None:
    """Remember (in the project too) that a layer is an RS-CLIP result, not an input."""
    layer.setCustomProperty(OUTPUT_PROPERTY, kind)


def is_rsclip_output(layer) -> bool:
    """An RS-CLIP result: marked when added, or a raster whose file the engine wrote (its OUTPUT_TAG),
    which also catches results added by hand or from an earlier session."""
    if layer.customProperty(OUTPUT_PROPERTY):
        return True
    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
        return False
    try:
        from osgeo import gdal

        from .engine.writers import OUTPUT_TAG

        ds = gdal.OpenEx(layer.source().split("|")[0], gdal.OF_RASTER)
        return ds is not None and bool(ds.GetMetadataItem(OUTPUT_TAG))
    except Exception:  # an unreadable file is not ours; the search reports it as unreadable
        return False


def _group(project: QgsProject, name: str) -> QgsLayerTreeGroup:
    root = project.layerTreeRoot()
    return root.findGroup(name) or root.insertGroup(0, name)


def palette_classes(summary: dict) -> list[tuple[int, str, str]]:
    """(value, name, colour) per class of an engine summary, then 'unknown' (its own value, K+1; called
    'background / unknown' when background prompts were given) when a threshold or background prompts can
    make it; value 0 is no data and not listed."""
    out = []
    for i, c in enumerate(summary.get("classes", [])):
        value = int(c.get("value", i + 1))
        if value == 0:
            continue
        out.append((value, str(c["name"]), str(c.get("color") or c.get("colour") or "#808080")))
    unknown = summary.get("unknown") or {}
    if (summary.get("threshold") is not None or summary.get("background")) and unknown.get("value"):
        from .engine.classes import UNKNOWN, UNKNOWN_COLOUR

        out.append((int(unknown["value"]), str(unknown.get("name") or UNKNOWN), str(unknown.get("color") or UNKNOWN_COLOUR)))
    return out


def style_labels(layer: QgsRasterLayer, summary: dict, qml: Optional[Path], colours: Optional[dict] = None) -> None:
    """Paletted renderer with class names and colours: the engine's .qml when it gives one, else built here."""
    mark_output(layer, "classes")
    if qml and Path(qml).is_file():
        layer.loadNamedStyle(str(qml))
    renderer = layer.renderer()
    if not isinstance(renderer, QgsPalettedRasterRenderer) or not renderer.classes():
        classes = [
            QgsPalettedRasterRenderer.Class(value, QColor(colour), name) for value, name, colour in palette_classes(summary)
        ]
        renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)
        layer.setRenderer(renderer)
    if colours:
        recoloured = []
        for c in renderer.classes():
            if c.label in colours:
                c.color = QColor(colours[c.label])
            recoloured.append(c)
        layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, recoloured))
    layer.triggerRepaint()


def style_ramp(layer: QgsRasterLayer, vmin: float, vmax: float, ramp_name: str = "Viridis") -> None:
    ramp = QgsStyle.defaultStyle().colorRamp(ramp_name)
    shader_fn = QgsColorRampShader(vmin, vmax, ramp)
    shader_fn.classifyColorRamp(5, -1)
    shader = QgsRasterShader(vmin, vmax)
    shader.setRasterShaderFunction(shader_fn)
    layer.setRenderer(QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader))


def style_confidence(layer: QgsRasterLayer) -> None:
    """Probability of the chosen class, 0..1 on a colour ramp (never a grey stretch of 0..1 floats)."""
    style_ramp(layer, 0.0, 1.0)
    mark_output(layer, "confidence")


def style_heatmap(layer: QgsRasterLayer) -> None:
    """Similarity scores on a ramp over their own range, see-through enough to show the map beneath."""
    stats = layer.dataProvider().bandStatistics(1)
    style_ramp(layer, stats.minimumValue, stats.maximumValue, "Magma")
    layer.setOpacity(0.6)
    mark_output(layer, "similarity")


def add_classification_layers(
    result, title: str, colours: Optional[dict] = None, project: Optional[QgsProject] = None
) -> tuple[QgsRasterLayer, QgsRasterLayer]:
    """Class map (paletted, legend with class names) and confidence (0..1 ramp) in a group of their own."""
    project = project or QgsProject.instance()
    labels = QgsRasterLayer(str(result.labels_path), f"{title} – classes")
    confidence = QgsRasterLayer(str(result.confidence_path), f"{title} – confidence")
    for lyr, what in ((labels, "class map"), (confidence, "confidence")):
        if not lyr.isValid():
            raise RuntimeError(f"QGIS cannot open the {what} {lyr.source()}; see the RS-CLIP log")
    style_labels(labels, result.summary, getattr(result, "qml_path", None), colours)
    style_confidence(confidence)
    group = _group(project, f"RS-CLIP: {title}")
    for lyr in (labels, confidence):
        project.addMapLayer(lyr, False)
    group.addLayer(labels)
    group.addLayer(confidence)
    confidence.setOpacity(1.0)
    group.findLayer(confidence.id()).setItemVisibilityChecked(False)
    polygons_path = (result.summary.get("files") or {}).get("polygons")
    if polygons_path:  # classes.gpkg: on top, in the class map's colours (the user's, when they chose some)
        polygons = QgsVectorLayer(f"{polygons_path}|layername=classes", f"{title} – polygons", "ogr")
        if not polygons.isValid():
            polygons = QgsVectorLayer(str(polygons_path), f"{title} – polygons", "ogr")
        if not polygons.isValid():
            raise RuntimeError(f"QGIS cannot open the polygons {polygons_path}; see the RS-CLIP log")
        summary = dict(result.summary)
        if colours:
            summary["classes"] = [{**c, "color": colours.get(c.get("name"), c.get("color"))}
                                  for c in result.summary.get("classes", [])]
        style_polygons(polygons, summary)
        project.addMapLayer(polygons, False)
        group.insertLayer(0, polygons)
        group.findLayer(polygons.id()).setItemVisibilityChecked(False)  # the class map shows the same; a click away
    return labels, confidence


def add_search_layers(result, title: str, project: Optional[QgsProject] = None) -> tuple[Optional[QgsVectorLayer], Optional[QgsRasterLayer]]:
    project = project or QgsProject.instance()
    group = _group(project, f"RS-CLIP search: {title}")
    hits_layer = heat_layer = None
    heatmaps = list(getattr(result, "heatmap_paths", None) or [])
    if not heatmaps and getattr(result, "heatmap_path", None):
        heatmaps = [result.heatmap_path]
    for path in heatmaps:
        lyr = QgsRasterLayer(str(path), f"{title} – similarity {Path(path).stem}")
        if not lyr.isValid():
            raise RuntimeError(f"QGIS cannot open the heat map {path}; see the RS-CLIP log")
        style_heatmap(lyr)
        project.addMapLayer(lyr, False)
        group.addLayer(lyr)
        heat_layer = heat_layer or lyr
    if getattr(result, "gpkg_path", None):
        hits_layer = QgsVectorLayer(str(result.gpkg_path), f"{title} – hits", "ogr")
        if not hits_layer.isValid():
            raise RuntimeError(f"QGIS cannot open the hits file {result.gpkg_path}; see the RS-CLIP log")
        style_hits(hits_layer)
        project.addMapLayer(hits_layer, False)
        group.insertLayer(0, hits_layer)
    return hits_layer, heat_layer


def style_hits(layer: QgsVectorLayer) -> None:
    """Red outlines labelled with the rank."""
    from qgis.core import QgsPalLayerSettings, QgsVectorLayerSimpleLabeling

    mark_output(layer, "hits")
    symbol = layer.renderer().symbol() if layer.renderer() is not None else None
    if symbol is not None:
        symbol.setColor(QColor(0, 0, 0, 0))
        sl = symbol.symbolLayer(0)
        if hasattr(sl, "setStrokeColor"):
            sl.setStrokeColor(QColor("#ff2d2d"))
            sl.setStrokeWidth(0.8)
    if "rank" in layer.fields().names():
        pal = QgsPalLayerSettings()
        pal.fieldName = "rank"
        layer.setLabeling(QgsVectorLayerSimpleLabeling(pal))
        layer.setLabelsEnabled(True)


def style_polygons(layer: QgsVectorLayer, summary: dict) -> None:
    """classes.gpkg: a categorized renderer on ``class`` with the label map's colours (palette_classes), so
    the polygons and the class map share one legend."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory

    mark_output(layer, "polygons")
    cats = []
    for _value, name, colour in palette_classes(summary):
        symbol = QgsFillSymbol.createSimple({"color": colour, "outline_color": "#404040", "outline_width": "0.1"})
        cats.append(QgsRendererCategory(name, symbol, name))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class", cats))
    layer.triggerRepaint()
