"""Typed options of the engine's jobs, grouped by what they control (as Deepness: one parameters object per job).

- :class:`RasterOptions`: how a raster is read (sensor, band names, Sentinel-2 DN offset, SAR units);
- :class:`TilingOptions`: which encoder and which tiles (modality, tile size on the ground, overlap, extent);
- :class:`RunOptions`: where and how inference runs (provider, batch size, reader threads, precision).

Each front end builds them once: the CLI from its arguments (``commands/common.py``), Processing from its
parameters, the dialogs from their fields; the engine passes the objects on, never their fields one by one.
Values are checked when an object is made, with errors naming the engine parameter (see errors.py).

The job functions (``classify_raster``, ``search``, ``build_index``) still accept the individual keyword
arguments of earlier versions; :func:`split_options` folds them into these objects at the entry point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from .errors import InputError

LABEL_MODES = ("dense", "tile")
# How a class's synonyms are merged (classify; text.synonym_merge is the rule).
SYNONYM_MERGES = ("mean", "max")


def optional_choice(value: Optional[str], param: str, choices: Sequence[str], off: str = "auto") -> Optional[str]:
    """A job setting whose default is spelt ``off`` ('auto', 'none') or None: None for the default, else
    ``value`` if it is one of ``choices``; anything else is an InputError naming ``{param}`` and the words."""
    if value is None or value == off:
        return None
    if value not in choices:
        raise InputError(f"{{{param}}} {value!r} is not one of {off}, {', '.join(choices)}")
    return value


def _opt_tuple(v: Optional[Sequence[Any]], conv=str) -> Optional[tuple]:
    return None if v is None else tuple(conv(x) for x in v)


@dataclass(frozen=True)
class RasterOptions:
    """How a raster is read; None = detected from the file (see raster.open_source)."""

    sensor: Optional[str] = None
    bands: Optional[tuple[str, ...]] = None
    s2_offset: Optional[float] = None
    sar_units: Optional[str] = None

    def __post_init__(self) -> None:
        # sensor and SAR units are checked against the band tables by open_source, with the raster in view.
        object.__setattr__(self, "bands", _opt_tuple(self.bands) or None)
        if self.s2_offset is not None and not math.isfinite(float(self.s2_offset)):
            raise InputError(f"{{s2_offset}} must be a number of DN (e.g. 1000), got {self.s2_offset}")

    def open(self, path):
        """The raster at ``path`` opened with these options (a RasterSource, a context manager)."""
        from .raster import open_source

        return open_source(path, sensor=self.sensor, bands=self.bands, s2_offset=self.s2_offset,
                           sar_units=self.sar_units)


@dataclass(frozen=True)
class TilingOptions:
    """Which encoder embeds the raster and which tiles it sees; None = the bundle's / the raster's own."""

    modality: Optional[str] = None
    tile_size_m: Optional[float] = None
    overlap: float = 0.0
    extent: Optional[tuple[float, float, float, float]] = None
    # Labelling mode (classify): "dense" (patch logits, needs an encoder with dense outputs), "tile" (one score
    # vector per tile), None = dense when the chosen encoder has dense outputs, else tile.
    mode: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", optional_choice(self.mode, "mode", LABEL_MODES))
        if not (isinstance(self.overlap, (int, float)) and 0.0 <= float(self.overlap) < 1.0):
            raise InputError(f"{{overlap}} must be a fraction in [0, 1), got {self.overlap}; e.g. 0.5 for half-tile overlap")
        object.__setattr__(self, "overlap", float(self.overlap))
        if self.tile_size_m is not None:  # checked before anything is opened; the raster and memory bound
            from .tiling import check_tile_size_m  # it further in tiling.tile_size_px_for

            object.__setattr__(self, "tile_size_m", check_tile_size_m(self.tile_size_m))
        if self.extent is not None:
            ext = _opt_tuple(self.extent, float)
            if len(ext) != 4 or not all(math.isfinite(v) for v in ext):
                raise InputError(f"{{extent}} must be four numbers xmin,ymin,xmax,ymax, got {self.extent}")
            object.__setattr__(self, "extent", ext)


@dataclass(frozen=True)
class RunOptions:
    """Where inference runs: ``provider`` auto|cuda|cpu, ``batch_size`` tiles per call (None: chosen for the
    device), ``threads`` raster reader threads (None: chosen for the device, 0: read in the calling thread),
    ``precision`` of the encoders: auto|fp32|fp16|int8 (runtime.choose_precision is the rule)."""

    provider: str = "auto"
    batch_size: Optional[int] = None
    threads: Optional[int] = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        from .runtime import PRECISION_CHOICES, PROVIDER_CHOICES

        if self.provider not in PROVIDER_CHOICES:
            raise InputError(f"{{provider}} {self.provider!r} is not one of {', '.join(PROVIDER_CHOICES)}")
        if self.batch_size is not None and (int(self.batch_size) != self.batch_size or self.batch_size < 1):
            raise InputError(f"{{batch_size}} must be a whole number of tiles >= 1, got {self.batch_size}")
        if self.threads is not None and (int(self.threads) != self.threads or self.threads < 0):
            raise InputError(f"{{threads}} must be a whole number >= 0, got {self.threads}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(f"{{precision}} {self.precision!r} is not one of {', '.join(PRECISION_CHOICES)}")


@dataclass(frozen=True)
class JobOptions:
    """The three groups together, as every job that reads and embeds a raster takes them."""

    raster: RasterOptions = field(default_factory=RasterOptions)
    tiling: TilingOptions = field(default_factory=TilingOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def kwargs(self) -> dict[str, Any]:
        """``raster=``, ``tiling=``, ``run=``: the keyword arguments of every job function."""
        return {"raster": self.raster, "tiling": self.tiling, "run": self.run}


# Earlier keyword arguments of the job functions -> (group, field).
_LEGACY = {
    **{f.name: ("raster", f.name) for f in fields(RasterOptions)},
    **{f.name: ("tiling", f.name) for f in fields(TilingOptions)},
    **{f.name: ("run", f.name) for f in fields(RunOptions)},
    "workers": ("run", "threads"),
}


def split_options(
    raster: Optional[RasterOptions] = None,
    tiling: Optional[TilingOptions] = None,
    run: Optional[RunOptions] = None,
    loose: Optional[Mapping[str, Any]] = None,
    *,
    where: str = "this job",
) -> JobOptions:
    """The option objects of a job call: those given, with any individual keyword arguments (``loose``, the
    earlier API: ``sensor=``, ``overlap=``, ``provider=``, ...) applied on top. Unknown names are a TypeError
    (a programming error, as for any function)."""
    groups: dict[str, Any] = {"raster": raster or RasterOptions(), "tiling": tiling or TilingOptions(),
                              "run": run or RunOptions()}
    changes: dict[str, dict[str, Any]] = {"raster": {}, "tiling": {}, "run": {}}
    for name, value in (loose or {}).items():
        if name not in _LEGACY:
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}")
        group, attr = _LEGACY[name]
        changes[group][attr] = value
    for g, ch in changes.items():
        if ch:
            groups[g] = replace(groups[g], **ch)
    return JobOptions(**groups)
