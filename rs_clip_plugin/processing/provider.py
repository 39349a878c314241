"""The Processing provider ``rsclip`` (usable from the toolbox, the model builder and qgis_process)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..presets import icon_path
from .archive_alg import ArchiveAddAlgorithm, ArchiveSearchAlgorithm
from .classify_alg import ClassifyAlgorithm
from .index_alg import IndexAlgorithm
from .search_alg import HeatmapAlgorithm, SearchAlgorithm

PROVIDER_ID = "rsclip"


class RSClipProvider(QgsProcessingProvider):
    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "RS-CLIP"

    def longName(self) -> str:
        return "RS-CLIP: zero-shot labelling and search of Sentinel rasters"

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def loadAlgorithms(self) -> None:
        for alg in (IndexAlgorithm(), ClassifyAlgorithm(), SearchAlgorithm(), HeatmapAlgorithm(),
                    ArchiveAddAlgorithm(), ArchiveSearchAlgorithm()):
            self.addAlgorithm(alg)

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:
        return "gpkg"

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:
        return "tif"
