"""rsclip:index — embed a raster's tiles once so later searches only compare vectors (``rsclip index``)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterRasterLayer,
)

from .base import RSClipAlgorithm
from .common import engine_call, extent_tuple, feedback_progress, index_facts, layer_source, load_bundle_spec


class IndexAlgorithm(RSClipAlgorithm):
    NAME = "index"
    FORCE = "FORCE"
    INDEX = "INDEX"
    TILES = "TILES"
    DISPLAY = "Build search index"
    HELP = (
        "Embeds every tile of a raster with the bundle's image encoder and caches the embeddings, so that "
        "searches over the layer are instant. An index is reused until the raster, the bundle or the tiling "
        "changes (FORCE rebuilds it)."
    )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Raster")))
        self.add_tiling_params()
        self.add_bundle_params()
        self.addParameter(QgsProcessingParameterBoolean(self.FORCE, self.tr("Rebuild even if cached"), defaultValue=False))
        self.addOutput(QgsProcessingOutputString(self.INDEX, self.tr("Index location")))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, self.tr("Tiles indexed")))
        self.addOutput(QgsProcessingOutputString(self.EXECUTION_PROVIDER, self.tr("Execution provider used")))

    def processAlgorithm(self, parameters, context, feedback):
        from ..engine.index import build_index

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        source = layer_source(layer)
        extent = extent_tuple(self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())) if parameters.get(
            self.EXTENT
        ) else None
        bundle = load_bundle_spec(self.parameterAsString(parameters, self.BUNDLE, context), feedback)
        index = engine_call(
            build_index,
            source,
            bundle,
            **self.job_options(parameters, context, extent).kwargs(),
            progress=feedback_progress(feedback),
            force=self.parameterAsBool(parameters, self.FORCE, context),
        )
        facts = index_facts(index)
        state = "reused" if facts["reused"] else "built"
        feedback.pushInfo(f"Index {state}: {facts['path']} ({facts['tiles']} tiles, provider {facts['provider']})")
        return {self.INDEX: facts["path"], self.TILES: facts["tiles"], self.EXECUTION_PROVIDER: facts["provider"]}
