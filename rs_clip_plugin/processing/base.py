"""Base class and the parameters RS-CLIP algorithms share (they mirror the ``rsclip`` CLI options)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..engine.bands import MODALITIES as BAND_TABLE_MODALITIES
from ..presets import icon_path
from .common import PROVIDERS

MODALITIES = ["auto", *BAND_TABLE_MODALITIES]  # from the band tables, as in the CLI and the dialog


class RSClipAlgorithm(QgsProcessingAlgorithm):
    NAME = ""
    DISPLAY = ""
    HELP = ""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("RSClip", text)

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:
        return self.tr(self.DISPLAY)

    def group(self) -> str:
        return self.tr("RS-CLIP")

    def groupId(self) -> str:
        return "rsclip"

    def shortHelpString(self) -> str:
        return self.tr(self.HELP)

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def createInstance(self):
        return type(self)()

    # -- shared parameters ----------------------------------------------------------------------------
    def add_bundle_params(self) -> None:
        self.addParameter(
            QgsProcessingParameterString(
                "BUNDLE",
                self.tr("Model bundle (folder, .zip or installed name; empty = default)"),
                defaultValue="",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "PROVIDER", self.tr("Execution provider"), options=["auto", "CPU", "CUDA"], defaultValue=0
            )
        )

    def add_tiling_params(self) -> None:
        self.addParameter(
            QgsProcessingParameterEnum(
                "MODALITY", self.tr("Encoder (modality)"), options=MODALITIES, defaultValue=0, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "TILE_SIZE_M",
                self.tr("Tile size in metres (0 = the bundle's)"),
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "OVERLAP",
                self.tr("Tile overlap (fraction)"),
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
                maxValue=0.9,
            )
        )
        self.addParameter(QgsProcessingParameterExtent("EXTENT", self.tr("Extent (empty = whole layer)"), optional=True))

    def provider_arg(self, parameters, context) -> str:
        return PROVIDERS[self.parameterAsEnum(parameters, "PROVIDER", context)]

    def modality_arg(self, parameters, context):
        m = MODALITIES[self.parameterAsEnum(parameters, "MODALITY", context)]
        return None if m == "auto" else m

    def tile_arg(self, parameters, context):
        v = self.parameterAsDouble(parameters, "TILE_SIZE_M", context)
        return v if v > 0 else None

    def job_options(self, parameters, context, extent=None):
        """The engine's option objects (engine/options.py), built once from this algorithm's parameters."""
        from ..engine.options import JobOptions, RunOptions, TilingOptions

        tiling = TilingOptions(modality=self.modality_arg(parameters, context), tile_size_m=self.tile_arg(parameters, context),
                               overlap=self.parameterAsDouble(parameters, "OVERLAP", context), extent=extent)
        return JobOptions(tiling=tiling, run=RunOptions(provider=self.provider_arg(parameters, context)))
