"""Arguments shared by the `rsclip` subcommands, defined once so every command spells and parses them alike."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..bands import MODALITIES, SENSOR_BANDS
from ..options import JobOptions, RasterOptions, RunOptions, TilingOptions
from ..radiometry import SAR_UNITS
from ..runtime import PRECISION_CHOICES, PROVIDER_CHOICES

SENSORS = tuple(SENSOR_BANDS)
RASTER_HELP = "GeoTIFF/COG/VRT, Sentinel-2 .SAFE folder or .zip, or a folder of per-band files"


def parse_extent(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give the extent as xmin,ymin,xmax,ymax in the raster's CRS")
    return values


def parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give the point as x,y in the query raster's CRS") from exc
    return x, y


def parse_bands(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def add_bundle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", help="bundle directory or .zip (default: the embedded default bundle)")


def add_provider_args(p: argparse.ArgumentParser, batch_size: bool = True, precision: bool = True) -> None:
    """How inference runs (RunOptions): --provider, --precision and, for jobs that embed tiles, --batch-size
    and --threads."""
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES,
                   help="ONNX Runtime device; auto (default): TensorRT or CUDA when usable, else CPU")
    if precision:
        p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                       help="encoder graph: auto (default) = int8 on the CPU when the bundle's int8 twin agreed with fp32 "
                       "on >= 99%% of real tiles at export, fp16 on a GPU when the bundle has it, else fp32")
    if batch_size:
        p.add_argument("--batch-size", type=int, help="tiles per inference call (default: chosen for the device)")
        p.add_argument("--threads", type=int, help="raster reader threads (default: chosen for the device; 0: none)")


def add_raster_args(p: argparse.ArgumentParser, *, what: str = "the raster", modality: bool = True, extent: bool = True) -> None:
    """How a raster is read and tiled: --modality, --sensor, --bands, --tile-size-m, --overlap, --extent."""
    if modality:
        p.add_argument("--modality", choices=MODALITIES, help=f"encoder for {what} (default: each raster's own)")
    p.add_argument("--sensor", choices=SENSORS, help=f"sensor and product level of {what}, when detection is wrong")
    p.add_argument("--bands", type=parse_bands, help="band names of a multi-band raster in band order, e.g. B04,B03,B02")
    p.add_argument("--s2-offset", type=float, metavar="DN",
                   help="Sentinel-2 DN offset to subtract (1000 for baseline >= 04.00; default: from the product metadata or name)")
    p.add_argument("--sar-units", choices=SAR_UNITS, help="Sentinel-1 values are dB or linear power (default: detected)")
    p.add_argument("--tile-size-m", type=float, help="tile size on the ground in metres (default: the bundle's)")
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction in [0, 1) (default 0)")
    if extent:
        p.add_argument("--extent", type=parse_extent, help="xmin,ymin,xmax,ymax in the raster's CRS (default: whole raster)")


def add_output_args(p: argparse.ArgumentParser, overwrite: bool = True) -> None:
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _taken(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def job_options(args: argparse.Namespace) -> JobOptions:
    """The raster, tiling and run options of a command, built once from the arguments its parser defined
    (those it did not define keep their defaults)."""
    return JobOptions(RasterOptions(**_taken(args, RasterOptions)), TilingOptions(**_taken(args, TilingOptions)),
                      RunOptions(**_taken(args, RunOptions)))
