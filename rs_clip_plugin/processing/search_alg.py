"""rsclip:search and rsclip:heatmap — find places by text or by example (``rsclip search``)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterPoint,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ..styling import style_heatmap, style_hits
from .base import RSClipAlgorithm
from .common import (
    engine_call,
    feedback_progress,
    layer_source,
    load_bundle_spec,
)
from .styles import StylePostProcessor


class _SearchBase(RSClipAlgorithm):
    LAYERS = "LAYERS"
    QUERY = "QUERY"
    QUERY_LAYER = "QUERY_LAYER"
    QUERY_POINT = "QUERY_POINT"
    NEGATIVE = "NEGATIVE"
    TOP_K = "TOP_K"
    def add_query_params(self) -> None:
        self.addParameter(
            QgsProcessingParameterMultipleLayers(self.LAYERS, self.tr("Rasters to search"), QgsProcessing.TypeRaster)
        )
        self.addParameter(
            QgsProcessingParameterString(self.QUERY, self.tr("Text query (any language the bundle speaks)"), optional=True)
        )
        self.addParameter(QgsProcessingParameterString(self.NEGATIVE, self.tr("Not like (text)"), optional=True))
        self.addParameter(QgsProcessingParameterString(self.LANG, self.tr("Query language"), defaultValue="en"))
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                self.QUERY_LAYER, self.tr("Find similar: raster holding the example (e.g. Sentinel-1)"), optional=True
            )
        )
        self.addParameter(QgsProcessingParameterPoint(self.QUERY_POINT, self.tr("Find similar: example point"), optional=True))
        self.add_bundle_params()

    def query_vector(self, parameters, context, bundle):
        from ..engine.search import image_query_vector, text_query_vector

        text = self.parameterAsString(parameters, self.QUERY, context).strip()
        qlayer = self.parameterAsRasterLayer(parameters, self.QUERY_LAYER, context)
        if qlayer is not None and parameters.get(self.QUERY_POINT):
            point = self.parameterAsPoint(parameters, self.QUERY_POINT, context, qlayer.crs())
            return engine_call(
                image_query_vector, bundle, raster=layer_source(qlayer, self.QUERY_LAYER), point=(point.x(), point.y())
            )
        if not text:
            raise QgsProcessingException(
                "no query: give QUERY (text), or QUERY_LAYER and QUERY_POINT for a 'find similar' search"
            )
        negative = self.parameterAsString(parameters, self.NEGATIVE, context).strip() or None
        lang = self.parameterAsString(parameters, self.LANG, context).strip() or "en"
        return engine_call(text_query_vector, bundle, text, negative=negative, lang=lang)

    def run_search(self, parameters, context, feedback, output: Path, top_k: int, heatmap: bool,
                   dense_heatmap: bool = False):
        """Search and write the hits (or the first raster's heat map) to ``output``, the path Processing chose:
        the engine stages it on that file system and moves it there when complete."""
        from ..engine.search import HITS_FILE, heatmap_name, search

        layers = self.parameterAsLayerList(parameters, self.LAYERS, context)
        if not layers:
            raise QgsProcessingException("LAYERS is empty: choose at least one raster layer to search")
        sources = [layer_source(lyr, self.LAYERS) for lyr in layers]
        bundle = load_bundle_spec(self.parameterAsString(parameters, self.BUNDLE, context), feedback)
        qvec = self.query_vector(parameters, context, bundle)
        name = heatmap_name(0, len(sources), str(sources[0])) if heatmap else HITS_FILE
        result = engine_call(
            search, sources, qvec, {name: output}, bundle=bundle, top_k=top_k, heatmap=heatmap,
            progress=feedback_progress(feedback), overwrite=True, dense_heatmap=dense_heatmap,
        )
        provider = str(getattr(result, "provider", "") or "")
        feedback.pushInfo(f"Execution provider: {provider}")
        for h in result.hits:
            feedback.pushInfo(f"  #{h.rank} score {h.score:.3f} {Path(str(h.source)).name} {tuple(round(v, 1) for v in h.bounds)}")
        return result, provider


class SearchAlgorithm(_SearchBase):
    NAME = "search"
    DISPLAY = "Search rasters (text or find similar)"
    HELP = (
        "Finds the tiles of the chosen rasters that best match a text query (\"a river\", \"um rio\") or an "
        "example place (QUERY_LAYER + QUERY_POINT; the example may come from a Sentinel-1 layer and the "
        "results from Sentinel-2 layers). Indexes are built the first time and reused. OUTPUT is a "
        "GeoPackage of hit polygons with rank, score and source."
    )

    def initAlgorithm(self, config=None):
        self.add_query_params()
        self.addParameter(QgsProcessingParameterNumber(self.TOP_K, self.tr("Number of hits"), defaultValue=10, minValue=1))
        self.addParameter(QgsProcessingParameterVectorDestination(self.OUTPUT, self.tr("Hits")))
        self.addOutput(QgsProcessingOutputString(self.EXECUTION_PROVIDER, self.tr("Execution provider used")))

    def processAlgorithm(self, parameters, context, feedback):
        output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        if output.suffix.lower() != ".gpkg":
            raise QgsProcessingException(f"OUTPUT {output}: hits are written as GeoPackage; give a .gpkg path")
        top_k = self.parameterAsInt(parameters, self.TOP_K, context)
        _, provider = self.run_search(parameters, context, feedback, output, top_k, heatmap=False)
        StylePostProcessor.attach(context, str(output), style_hits)
        return {self.OUTPUT: str(output), self.EXECUTION_PROVIDER: provider}


class HeatmapAlgorithm(_SearchBase):
    NAME = "heatmap"
    DISPLAY = "Similarity heat map"
    DENSE_HEATMAP = "DENSE_HEATMAP"
    HELP = (
        "Writes the similarity of every tile of the chosen rasters to a text query or an example place as a "
        "float32 raster (higher = more similar): where on the map does the query match? DENSE_HEATMAP (bundles "
        "whose encoder has dense outputs) indexes patch embeddings too and scores every patch, so the map "
        "follows shapes inside a tile."
    )

    def initAlgorithm(self, config=None):
        self.add_query_params()
        self.addParameter(QgsProcessingParameterBoolean(
            self.DENSE_HEATMAP, self.tr("Patch resolution (index patch embeddings; encoders with dense outputs)"),
            defaultValue=False))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Heat map")))
        self.addOutput(QgsProcessingOutputString(self.EXECUTION_PROVIDER, self.tr("Execution provider used")))

    def processAlgorithm(self, parameters, context, feedback):
        output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        if output.suffix.lower() not in (".tif", ".tiff"):
            raise QgsProcessingException(f"OUTPUT {output}: the heat map is written as GeoTIFF; give a .tif path")
        _, provider = self.run_search(parameters, context, feedback, output, top_k=1, heatmap=True,
                                      dense_heatmap=self.parameterAsBool(parameters, self.DENSE_HEATMAP, context))
        StylePostProcessor.attach(context, str(output), style_heatmap)
        return {self.OUTPUT: str(output), self.EXECUTION_PROVIDER: provider}
