"""Class lists for zero-shot labelling: parsing what users type or keep in files, and their colours.

Accepted forms (the same everywhere: CLI, plugin, Processing):
- one string, classes separated by ";" or new lines: ``"forest|woodland; river; annual crop"``;
- a list of strings (each may carry synonyms) or of ClassSpec;
- a text file (a ``Path``, or a string naming an existing file), one class per line.
``forest|woodland`` is one class named "forest" whose prompts also use "woodland" (merged by max or mean:
text.synonym_merge). Background prompts (``parse_background``) are written the same way. Blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

# In a uint8 label raster 0 is no data and K+1 is "unknown" (below the threshold), which leaves 254 classes.
MAX_CLASSES = 254
UNKNOWN = "unknown"
# The same value K+1 when background prompts were given: a pixel won by a background prompt, or below the
# threshold. The one wording of it for the legend, the .qml, the polygons, the area tables and the summary.
BACKGROUND_UNKNOWN = "background / unknown"
UNKNOWN_COLOUR = "#b0b0b0"  # a visible neutral grey: unknown is a result, shown in the legend, unlike no data
NODATA = "no data"
NODATA_COLOUR = "#000000"  # transparent in the colour table
SYNONYM_SEP = "|"
CLASSES_HELP = 'pass classes as "forest;river;annual crop" (synonyms as "forest|woodland") or a file with one class per line'

ClassesInput = Union[str, os.PathLike, Sequence[Union[str, "ClassSpec"]]]


@dataclass(frozen=True)
class ClassSpec:
    name: str
    synonyms: tuple[str, ...] = ()

    @property
    def phrases(self) -> tuple[str, ...]:
        """Every wording of the class, the name first."""
        return (self.name, *self.synonyms)

    @classmethod
    def parse(cls, entry: str) -> ClassSpec:
        parts = [p.strip() for p in entry.split(SYNONYM_SEP)]
        parts = [p for p in parts if p]
        if not parts:
            raise ValueError(f"class entry {entry!r} holds no name; {CLASSES_HELP}")
        seen: list[str] = []
        for p in parts:
            if p not in seen:
                seen.append(p)
        return cls(seen[0], tuple(seen[1:]))


def _entries_from_text(text: str) -> list[str]:
    out = []
    for line in text.replace(";", "\n").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def _read_file(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"class file {path} does not exist; {CLASSES_HELP}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"class file {path} is not UTF-8 text ({exc}); save it as UTF-8, one class per line") from exc
    return _entries_from_text(text)


def parse_classes(value: ClassesInput) -> list[ClassSpec]:
    """ClassSpecs from a ';'-separated string, a list, or a file; ValueError when none are given."""
    if isinstance(value, os.PathLike):
        entries: list = _read_file(Path(value))
        where = f"class file {value}"
    elif isinstance(value, str):
        if ";" not in value and "\n" not in value and value.strip() and Path(value).is_file():
            entries, where = _read_file(Path(value)), f"class file {value}"
        else:
            entries, where = _entries_from_text(value), "the class list"
    elif isinstance(value, Iterable):
        entries, where = [], "the class list"
        for v in value:
            if isinstance(v, ClassSpec):
                entries.append(v)
            elif isinstance(v, str):
                entries.extend(_entries_from_text(v.replace(";", "\n")))
            else:
                raise ValueError(f"class list item {v!r} is not text; {CLASSES_HELP}")
    else:
        raise ValueError(f"classes must be text, a list or a file, not {type(value).__name__}; {CLASSES_HELP}")
    specs = [e if isinstance(e, ClassSpec) else ClassSpec.parse(e) for e in entries]
    if not specs:
        raise ValueError(f"no classes given in {where}; {CLASSES_HELP}")
    names = [s.name.casefold() for s in specs]
    dupes = sorted({s.name for s in specs if names.count(s.name.casefold()) > 1})
    if dupes:
        raise ValueError(f"class {', '.join(map(repr, dupes))} listed twice in {where}; list each class once")
    if UNKNOWN in names:
        raise ValueError(f"{UNKNOWN!r} is reserved for pixels below the threshold; rename that class")
    if len(specs) > MAX_CLASSES:
        raise ValueError(f"{len(specs)} classes in {where}; a uint8 label map holds at most {MAX_CLASSES}")
    return specs


def unknown_name(background: bool) -> str:
    """What label value K+1 is called: 'unknown' (below the threshold), or 'background / unknown' when
    background prompts can also win a pixel."""
    return BACKGROUND_UNKNOWN if background else UNKNOWN


BACKGROUND_HELP = 'pass background prompts as "cloud;shadow" (synonyms as "cloud|haze"), or leave them out'


def parse_background(value: Union[str, Sequence[Union[str, ClassSpec]], None],
                     classes: Sequence[ClassSpec] = ()) -> tuple[ClassSpec, ...]:
    """Background prompts (SegEarth-OV): extra logit columns that, when they win a pixel, make it 'background /
    unknown'. Written like classes (";"-separated, synonyms with "|"); None or blank text = none. A prompt that
    is also one of ``classes`` is refused: the pixel could not be both."""
    from .errors import InputError

    if value is None:
        return ()
    if isinstance(value, str):
        entries: list = _entries_from_text(value)
    elif isinstance(value, Iterable):
        entries = []
        for v in value:
            if isinstance(v, ClassSpec):
                entries.append(v)
            elif isinstance(v, str):
                entries.extend(_entries_from_text(v))
            else:
                raise InputError(f"{{background}} item {v!r} is not text; {BACKGROUND_HELP}")
    else:
        raise InputError(f"{{background}} must be text or a list, not {type(value).__name__}; {BACKGROUND_HELP}")
    specs: list[ClassSpec] = []
    for e in entries:
        if isinstance(e, ClassSpec):
            spec = e
        else:
            try:
                spec = ClassSpec.parse(e)
            except ValueError:  # its wording names the class list; this entry is a background prompt
                raise InputError(f"{{background}} entry {e!r} holds no prompt; {BACKGROUND_HELP}") from None
        if spec.name.casefold() not in {s.name.casefold() for s in specs}:
            specs.append(spec)
    taken = {p.casefold() for c in classes for p in c.phrases}
    clash = [p for s in specs for p in s.phrases if p.casefold() in taken]
    if clash:
        raise InputError(f"{{background}} prompt {clash[0]!r} is also one of the classes; a pixel cannot be both: "
                         "remove it from the background or from the classes")
    return tuple(specs)


# Colours a GIS analyst expects for common land-cover words (first match wins, matched on whole words).
_KEYWORD_COLOURS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sea", "lake", "water", "ocean", "reservoir", "pond", "lagoon"), "#1f5fbf"),
    (("river", "stream", "canal"), "#3fa7e0"),
    (("forest", "woodland", "tree", "trees", "jungle"), "#1b7837"),
    (("permanent", "orchard", "plantation", "vineyard", "olive"), "#8c6d1f"),
    (("annual", "crop", "cropland", "arable", "field", "fields", "farmland", "agriculture", "rice", "paddy"), "#f0d542"),
    (("pasture", "grassland", "meadow", "grass"), "#a6d96a"),
    (("herbaceous", "shrub", "shrubland", "scrub", "vegetation", "bush"), "#66bd63"),
    (("highway", "road", "roads", "railway", "airport", "runway"), "#7f7f7f"),
    (("industrial", "factory", "commercial", "port"), "#9e3fa6"),
    (("residential", "urban", "town", "city", "buildings", "settlement", "village"), "#d73027"),
    (("bare", "sand", "desert", "rock", "soil", "beach"), "#d9b38c"),
    (("snow", "ice", "glacier", "cloud", "clouds"), "#f2f2f2"),
    (("wetland", "marsh", "swamp", "bog", "mangrove"), "#5ab4ac"),
)


def _qualitative(i: int) -> str:
    """The i-th colour of an open-ended, well-separated palette (golden-angle hues)."""
    h = (0.083 + i * 0.618033988749895) % 1.0
    s, v = (0.65, 0.85) if i % 2 == 0 else (0.55, 0.7)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def class_colours(classes: Sequence[ClassSpec | str]) -> list[str]:
    """A distinct '#rrggbb' per class: land-cover words get their customary colour, others a palette colour."""
    out: list[str] = []
    fallback = 0
    for c in classes:
        spec = c if isinstance(c, ClassSpec) else ClassSpec.parse(c)
        words = {w for p in spec.phrases for w in p.casefold().replace("-", " ").replace(",", " ").split()}
        colour = next((col for keys, col in _KEYWORD_COLOURS if words & set(keys) and col not in out), None)
        while colour is None or colour in out:
            colour = _qualitative(fallback)
            fallback += 1
        out.append(colour)
    return out


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"colour {colour!r} is not #rrggbb")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
