"""Styling of Processing outputs when QGIS loads them (``runAndLoadResults``, the toolbox's Run, models).

QGIS loads a Processing output layer itself, after the algorithm returns, and ignores a ``.qml`` beside
the file: a uint8 class map would show a 256-entry 0..255 legend and the confidence a grey stretch. The
documented hook is a layer post-processor set on the output's "load on completion" details; it runs on
the main thread once the layer exists. The styles are the GUI's (``styling.py``), so both look the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from qgis.core import QgsMapLayer, QgsProcessingContext, QgsProcessingLayerPostProcessorInterface


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    # The context owns the C++ post-processor but not its Python wrapper: without a Python reference the
    # wrapper is collected before QGIS calls it, and the layer silently stays unstyled.
    _alive: ClassVar[list[StylePostProcessor]] = []

    def __init__(self, style: Callable[[QgsMapLayer], None]) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext, feedback) -> None:
        self.style(layer)
        layer.triggerRepaint()

    @classmethod
    def attach(cls, context: QgsProcessingContext, output: str, style: Callable[[QgsMapLayer], None]) -> None:
        """Style ``output`` when QGIS loads it on completion (nothing to do when it will not be loaded)."""
        if output and context.willLoadLayerOnCompletion(output):
            pp = cls(style)
            cls._alive = [*cls._alive[-63:], pp]  # bounded: a long session runs many algorithms
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(pp)
