"""rsclip:classify — zero-shot labelling of a raster by class names (``rsclip classify``)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ..engine.options import LABEL_MODES, SYNONYM_MERGES
from ..engine.refine import REFINE_METHODS
from ..presets import PRESETS, preset_classes
from ..styling import style_confidence, style_labels, style_polygons
from .base import RSClipAlgorithm
from .common import (
    engine_call,
    extent_tuple,
    feedback_progress,
    layer_source,
    load_bundle_spec,
)
from .styles import StylePostProcessor

PRESET_OPTIONS = ["(none: use CLASSES)", *PRESETS]
MODE_OPTIONS = ["auto", *LABEL_MODES]  # the engine's TilingOptions.mode, 'auto' = dense when the encoder has it
SYNONYM_OPTIONS = ["auto", *SYNONYM_MERGES]  # 'auto' = the engine's default (text.synonym_merge)
REFINE_OPTIONS = ["none", *REFINE_METHODS]  # the engine's ClassifyJob.refine (engine/refine.py)


class ClassifyAlgorithm(RSClipAlgorithm):
    NAME = "classify"
    CLASSES = "CLASSES"
    PRESET = "PRESET"
    THRESHOLD = "THRESHOLD"
    OVERWRITE = "OVERWRITE"
    CONFIDENCE = "CONFIDENCE"
    SUMMARY = "SUMMARY"
    POLYGONS = "POLYGONS"
    MMU_HA = "MMU_HA"
    MODE = "MODE"
    BACKGROUND = "BACKGROUND"
    SYNONYMS = "SYNONYMS"
    REFINE = "REFINE"
    DISPLAY = "Classify raster by prompt"
    HELP = (
        "Labels every pixel of a raster with one of the classes you type, by comparing image tiles with the "
        "class names through the model bundle's aligned image and text encoders (zero-shot).\n\n"
        "CLASSES: classes separated by ';' (synonyms as 'forest|woodland'), or a preset. Pixels whose best "
        "probability is below THRESHOLD become 'unknown' (the value after the last class; 0 is no data). "
        "BACKGROUND: prompts such as 'cloud;shadow' that compete with the classes; pixels they win become "
        "'background / unknown' (the same value). MODE: dense labels every pixel from the encoder's patch outputs "
        "(when the bundle has them), tile gives one label per tile, auto picks dense when it can. SYNONYMS: how a "
        "class's synonyms are merged, mean or max (auto: max, measured better). REFINE: pamr moves the dense labels' "
        "edges onto the image's edges (dense mode only; none by default). OUTPUT is a uint8 label raster with a "
        "colour table and a .qml style beside it; CONFIDENCE holds the probability of the chosen class. "
        "POLYGONS (optional GeoPackage) holds the class map as polygons with class, area_ha and mean_confidence; "
        "regions smaller than MMU_HA hectares are merged into their largest neighbour first."
    )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Raster (Sentinel-2, Sentinel-1 or RGB)")))
        self.addParameter(
            QgsProcessingParameterString(self.CLASSES, self.tr("Classes (';'-separated)"), defaultValue="", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.PRESET, self.tr("Class preset"), options=PRESET_OPTIONS, defaultValue=0)
        )
        self.addParameter(QgsProcessingParameterString(self.LANG, self.tr("Language of the class names"), defaultValue="en"))
        self.add_number(self.THRESHOLD, self.tr("'unknown' below this probability (0 = off)"), default=0.0, minimum=0.0, maximum=1.0)
        self.addParameter(QgsProcessingParameterString(
            self.BACKGROUND, self.tr("Background prompts (';'-separated; pixels they win become 'background / unknown')"),
            defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.MODE, self.tr("Labelling mode (dense: per pixel from patch outputs; tile: per tile)"),
            options=MODE_OPTIONS, defaultValue=0, optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.SYNONYMS, self.tr("Merge synonyms by"), options=SYNONYM_OPTIONS, defaultValue=0, optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.REFINE, self.tr("Refine edges (pamr: along the image's edges; dense mode only)"),
            options=REFINE_OPTIONS, defaultValue=0, optional=True))
        self.add_tiling_params()
        self.add_bundle_params()
        self.addParameter(QgsProcessingParameterBoolean(self.OVERWRITE, self.tr("Overwrite outputs"), defaultValue=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Class map")))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.CONFIDENCE, self.tr("Confidence"), optional=True, createByDefault=False
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.SUMMARY, self.tr("Area table (JSON)"), fileFilter="JSON (*.json)", optional=True, createByDefault=False
            )
        )
        self.add_number(self.MMU_HA, self.tr("Polygons: minimum mapping unit (ha, 0 = off)"), default=0.0, minimum=0.0)
        polygons = QgsProcessingParameterVectorDestination(
            self.POLYGONS, self.tr("Class polygons"), QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=False,
        )
        polygons.setSupportsNonFileBasedOutput(False)  # the engine writes the GeoPackage itself
        self.addParameter(polygons)
        self.addOutput(QgsProcessingOutputString(self.EXECUTION_PROVIDER, self.tr("Execution provider used")))

    def processAlgorithm(self, parameters, context, feedback):
        from ..engine.classify import CONFIDENCE, LABELS, POLYGONS, QML, SUMMARY, classify_raster
        from ..engine.writers import AUX_SUFFIX

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        source = layer_source(layer)
        lang = self.parameterAsString(parameters, self.LANG, context).strip() or "en"
        preset = PRESET_OPTIONS[self.parameterAsEnum(parameters, self.PRESET, context)]
        classes_text = self.parameterAsString(parameters, self.CLASSES, context).strip()
        if preset in PRESETS:
            try:
                classes = preset_classes(preset, lang)
            except ValueError as exc:
                raise QgsProcessingException(str(exc)) from exc
        elif classes_text:
            classes = classes_text
        else:
            raise QgsProcessingException('CLASSES is empty: type classes as "forest;water;town" or choose a PRESET')
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context) or None
        background = self.parameterAsString(parameters, self.BACKGROUND, context).strip() or None
        mode = MODE_OPTIONS[self.parameterAsEnum(parameters, self.MODE, context)]
        synonyms = SYNONYM_OPTIONS[self.parameterAsEnum(parameters, self.SYNONYMS, context)]
        refine = REFINE_OPTIONS[self.parameterAsEnum(parameters, self.REFINE, context)]
        extent = extent_tuple(self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())) if parameters.get(
            self.EXTENT
        ) else None
        output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        conf_param = self.parameterAsOutputLayer(parameters, self.CONFIDENCE, context)
        summary_param = self.parameterAsFileOutput(parameters, self.SUMMARY, context)
        overwrite = self.parameterAsBool(parameters, self.OVERWRITE, context)
        poly_param = self.parameterAsOutputLayer(parameters, self.POLYGONS, context)
        poly = Path(poly_param.split("|")[0]) if poly_param else None
        if poly is not None and poly.suffix.lower() != ".gpkg":
            raise QgsProcessingException(f"POLYGONS {poly}: the polygons are written as a GeoPackage; give a .gpkg path")
        if output.suffix.lower() not in (".tif", ".tiff"):
            raise QgsProcessingException(f"OUTPUT {output}: the class map is written as GeoTIFF; give a .tif path")

        bundle = load_bundle_spec(self.parameterAsString(parameters, self.BUNDLE, context), feedback)
        conf = Path(conf_param) if conf_param else output.with_name(f"{output.stem}_confidence.tif")
        summ = Path(summary_param) if summary_param else output.with_name(f"{output.stem}_summary.json")
        # Each output goes to the path Processing chose; the engine stages them and publishes the set as one unit.
        targets = {LABELS: output, LABELS + AUX_SUFFIX: Path(str(output) + AUX_SUFFIX),
                   QML: output.with_suffix(".qml"),  # QGIS styles the layer from it on load
                   CONFIDENCE: conf, SUMMARY: summ}
        if poly is not None:
            targets[POLYGONS] = poly
        result = engine_call(classify_raster, source, classes, targets, bundle=bundle, lang=lang, threshold=threshold,
                             background=background, synonyms=synonyms, refine=refine,
                             **self.job_options(parameters, context, extent, mode).kwargs(),
                             progress=feedback_progress(feedback), overwrite=overwrite,
                             polygons=poly is not None, mmu_ha=self.parameterAsDouble(parameters, self.MMU_HA, context))
        outputs = {self.OUTPUT: str(output), self.CONFIDENCE: str(conf), self.SUMMARY: str(summ)}
        for warning in result.summary.get("warnings", []):
            feedback.pushWarning(warning)
        summary = result.summary
        qml = output.with_suffix(".qml")
        StylePostProcessor.attach(context, str(output), lambda lyr: style_labels(lyr, summary, qml))
        StylePostProcessor.attach(context, str(conf) if conf_param else "", style_confidence)
        if poly is not None:
            outputs[self.POLYGONS] = str(poly)
            StylePostProcessor.attach(context, poly_param, lambda lyr: style_polygons(lyr, summary))
        provider = str(result.summary.get("provider", ""))
        refined = f", refined by {summary['refine']['method']}" if summary.get("refine") else ""
        feedback.pushInfo(f"Execution provider: {provider}; {summary.get('mode')} mode{refined}, synonyms merged by "
                          f"{summary.get('synonyms')}")
        unknown = summary.get("unknown") or {}
        for c in [*summary.get("classes", []), *([unknown] if unknown.get("pixels") else [])]:
            area = c.get("area_ha")  # None when the raster has no CRS (no ground area)
            size = f"{area:.1f} ha" if area is not None else f"{c.get('pixels', 0)} px"
            feedback.pushInfo(f"  {c.get('name')}: {size}")
        outputs[self.EXECUTION_PROVIDER] = provider
        return outputs
