"""Base class and the parameters RS-CLIP algorithms share (they mirror the ``rsclip`` CLI options)."""

from __future__ import annotations

from typing import Optional

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
from ..engine.runtime import PRECISION_CHOICES
from ..presets import icon_path
from .common import PROVIDERS

MODALITIES = ["auto", *BAND_TABLE_MODALITIES]  # from the band tables, as in the CLI and the dialog


class RSClipAlgorithm(QgsProcessingAlgorithm):
    NAME = ""
    # Parameter and output names (QGIS Processing style: one constant each, used everywhere they are read).
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    LANG = "LANG"
    BUNDLE = "BUNDLE"
    PROVIDER = "PROVIDER"
    PRECISION = "PRECISION"
    MODALITY = "MODALITY"
    TILE_SIZE_M = "TILE_SIZE_M"
    OVERLAP = "OVERLAP"
    EXTENT = "EXTENT"
    EXECUTION_PROVIDER = "EXECUTION_PROVIDER"
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

    def add_number(self, name: str, label: str, *, default: float, minimum: float,
                   maximum: Optional[float] = None) -> None:
        """A floating-point parameter with its bounds (the one way the algorithms declare them)."""
        param = QgsProcessingParameterNumber(name, label, type=QgsProcessingParameterNumber.Double,
                                             defaultValue=default, minValue=minimum)
        if maximum is not None:
            param.setMaximum(maximum)
        self.addParameter(param)

    # -- shared parameters ----------------------------------------------------------------------------
    def add_bundle_params(self) -> None:
        self.addParameter(
            QgsProcessingParameterString(
                self.BUNDLE,
                self.tr("Model bundle (folder, .zip or installed name; empty = default)"),
                defaultValue="",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.PROVIDER, self.tr("Execution provider"), options=["auto", "CPU", "CUDA"], defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.PRECISION, self.tr("Precision (auto: int8 on CPU where the bundle recorded it agrees, fp16 on GPU)"),
                options=list(PRECISION_CHOICES), defaultValue=0, optional=True,
            )
        )

    def add_tiling_params(self) -> None:
        self.addParameter(
            QgsProcessingParameterEnum(
                self.MODALITY, self.tr("Encoder (modality)"), options=MODALITIES, defaultValue=0, optional=True
            )
        )
        self.add_number(self.TILE_SIZE_M, self.tr("Tile size in metres (0 = the bundle's)"), default=0.0, minimum=0.0)
        self.add_number(self.OVERLAP, self.tr("Tile overlap (fraction)"), default=0.0, minimum=0.0, maximum=0.9)
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent (empty = whole layer)"), optional=True))

    def provider_arg(self, parameters, context) -> str:
        return PROVIDERS[self.parameterAsEnum(parameters, self.PROVIDER, context)]

    def modality_arg(self, parameters, context):
        m = MODALITIES[self.parameterAsEnum(parameters, self.MODALITY, context)]
        return None if m == "auto" else m

    def tile_arg(self, parameters, context):
        v = self.parameterAsDouble(parameters, self.TILE_SIZE_M, context)
        return v if v > 0 else None

    def job_options(self, parameters, context, extent=None, mode=None):
        """The engine's option objects (engine/options.py), built once from this algorithm's parameters
        (``mode``: classify's labelling mode, None = auto)."""
        from ..engine.options import JobOptions, RunOptions, TilingOptions

        tiling = TilingOptions(modality=self.modality_arg(parameters, context), tile_size_m=self.tile_arg(parameters, context),
                               overlap=self.parameterAsDouble(parameters, self.OVERLAP, context), extent=extent, mode=mode)
        precision = PRECISION_CHOICES[self.parameterAsEnum(parameters, self.PRECISION, context)]
        return JobOptions(tiling=tiling, run=RunOptions(provider=self.provider_arg(parameters, context),
                                                        precision=precision))


A = RSClipAlgorithm
# Engine parameter -> how a Processing user changes it (errors name these: engine/errors.py).
PARAMETER_NAMES = {
    "sensor": A.MODALITY, "modality": A.MODALITY, "bands": f"the band descriptions of {A.INPUT} (or a VRT naming them)",
    "tile_size_m": A.TILE_SIZE_M, "overlap": A.OVERLAP, "extent": A.EXTENT, "bundle": A.BUNDLE, "lang": A.LANG,
    "provider": A.PROVIDER, "precision": A.PRECISION, "out": A.OUTPUT, "threshold": "THRESHOLD", "overwrite": "OVERWRITE", "top_k": "TOP_K",
    # classify's own parameters (processing/classify_alg.py)
    "mode": "MODE", "background": "BACKGROUND", "synonyms": "SYNONYMS", "mmu_ha": "MMU_HA", "refine": "REFINE",
    "dense_heatmap": "DENSE_HEATMAP",  # rsclip:heatmap
}

