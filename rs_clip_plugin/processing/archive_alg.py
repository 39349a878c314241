"""rsclip:archive_add and rsclip:archive_search — the archive commands (``rsclip archive add|search``)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ..styling import style_hits
from .base import RSClipAlgorithm
from .common import PROVIDERS, engine_call, feedback_progress
from .styles import StylePostProcessor


def _open_or_create(folder: str, bundle: str):
    from ..engine.archive import ARCHIVE_FILE, Archive, create_archive

    if (Path(folder) / ARCHIVE_FILE).is_file():
        return Archive.open(folder)
    return create_archive(folder, bundle or None)


class ArchiveAddAlgorithm(RSClipAlgorithm):
    NAME = "archive_add"
    DISPLAY = "Add scenes to an archive"
    HELP = (
        "Embeds scenes into an archive folder (created for BUNDLE when it does not exist yet): rasters, COG "
        "URLs, GDAL paths (/vsicurl/...), STAC Item/ItemCollection JSON files or URLs, one per line in SOURCES. "
        "Scenes already in the archive are skipped; a scene that fails is reported and the others go on. "
        "DASK: local:N or a scheduler address to embed on a Dask cluster (empty: here)."
    )
    ARCHIVE, SOURCES, DASK = "ARCHIVE", "SOURCES", "DASK"

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.ARCHIVE, self.tr("Archive folder"),
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(self.SOURCES, self.tr("Scenes (one path, URL or STAC item per line)"),
                                                       multiLine=True))
        self.addParameter(QgsProcessingParameterString(self.DASK, self.tr("Dask cluster (local:N or address; empty = here)"),
                                                       optional=True, defaultValue=""))
        self.add_bundle_params()
        self.addOutput(QgsProcessingOutputNumber("ADDED", self.tr("Scenes added")))
        self.addOutput(QgsProcessingOutputNumber("FAILED", self.tr("Scenes failed")))
        self.addOutput(QgsProcessingOutputNumber("N_VECTORS", self.tr("Vectors in the archive")))
        self.addOutput(QgsProcessingOutputString("INDEX", self.tr("Index kind")))

    def processAlgorithm(self, parameters, context, feedback):
        folder = self.parameterAsFile(parameters, self.ARCHIVE, context)
        sources = [s.strip() for s in self.parameterAsString(parameters, self.SOURCES, context).splitlines() if s.strip()]
        if not sources:
            raise QgsProcessingException("SOURCES is empty: give one raster, URL or STAC item per line")
        bundle = self.parameterAsString(parameters, "BUNDLE", context).strip()
        provider = PROVIDERS[self.parameterAsEnum(parameters, "PROVIDER", context)]
        dask = self.parameterAsString(parameters, self.DASK, context).strip() or None
        arc = engine_call(_open_or_create, folder, bundle)
        rep = engine_call(arc.add, sources, provider="cpu" if provider == "auto" and dask else provider, dask=dask,
                          progress=feedback_progress(feedback))
        for scene, err in rep.failed:
            feedback.reportError(f"{scene}: {err}", fatalError=False)
        feedback.pushInfo(f"{len(rep.added)} added, {len(rep.skipped)} already there, {len(rep.failed)} failed; "
                          f"{rep.n_vectors} vectors, {rep.index.get('kind')} index, recall@10 {rep.index.get('recall_at_10')}")
        return {"ADDED": len(rep.added), "FAILED": len(rep.failed), "N_VECTORS": rep.n_vectors,
                "INDEX": str(rep.index.get("kind"))}


class ArchiveSearchAlgorithm(RSClipAlgorithm):
    NAME = "archive_search"
    DISPLAY = "Search an archive"
    HELP = (
        "Finds the best distinct places in an archive for a text query, optionally within an extent (any CRS) "
        "and a time range (2020-01-01/2020-12-31). OUTPUT is a GeoPackage (EPSG:4326) of tile polygons with "
        "rank, score, scene, datetime and source."
    )
    ARCHIVE, QUERY, NEGATIVE, EXTENT, DATETIME, TOP_K = "ARCHIVE", "QUERY", "NEGATIVE", "EXTENT", "DATETIME", "TOP_K"

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.ARCHIVE, self.tr("Archive folder"),
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(self.QUERY, self.tr("Text query")))
        self.addParameter(QgsProcessingParameterString(self.NEGATIVE, self.tr("Not like (text)"), optional=True))
        self.addParameter(QgsProcessingParameterString("LANG", self.tr("Query language"), defaultValue="en"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Only within this extent"), optional=True))
        self.addParameter(QgsProcessingParameterString(self.DATETIME, self.tr("Only in this time range (START/END)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.TOP_K, self.tr("Number of hits"), defaultValue=10, minValue=1))
        self.addParameter(QgsProcessingParameterVectorDestination(self.OUTPUT, self.tr("Hits")))

    OUTPUT = "OUTPUT"

    def processAlgorithm(self, parameters, context, feedback):
        from qgis.core import QgsCoordinateReferenceSystem

        from ..engine.archive import Archive, write_hits
        from ..engine.default_bundle import as_bundle
        from ..engine.search import text_query_vector

        output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        if output.suffix.lower() != ".gpkg":
            raise QgsProcessingException(f"OUTPUT {output}: hits are written as GeoPackage; give a .gpkg path")
        arc = engine_call(Archive.open, self.parameterAsFile(parameters, self.ARCHIVE, context))
        bundle = engine_call(as_bundle, arc.config.get("bundle") or None)
        negative = self.parameterAsString(parameters, self.NEGATIVE, context).strip() or None
        vec = engine_call(text_query_vector, bundle, self.parameterAsString(parameters, self.QUERY, context),
                          negative=negative, lang=self.parameterAsString(parameters, "LANG", context).strip() or "en")
        bbox = None
        if parameters.get(self.EXTENT):
            r = self.parameterAsExtent(parameters, self.EXTENT, context, QgsCoordinateReferenceSystem("EPSG:4326"))
            bbox = [r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum()]
        hits = engine_call(arc.search, vec, top_k=self.parameterAsInt(parameters, self.TOP_K, context), bbox=bbox,
                           datetime_range=self.parameterAsString(parameters, self.DATETIME, context).strip() or None)
        # write_hits names its file hits.gpkg: stage it beside OUTPUT, then rename to the chosen name.
        stage = output.parent / f".{output.stem}.rsclip-archive"
        written = engine_call(write_hits, hits, stage, overwrite=True)
        written.replace(output)
        stage.rmdir()
        for h in hits:
            feedback.pushInfo(f"  #{h.rank} score {h.score:.3f} {h.scene} {h.datetime or '-'}")
        StylePostProcessor.attach(context, str(output), style_hits)
        return {self.OUTPUT: str(output)}
