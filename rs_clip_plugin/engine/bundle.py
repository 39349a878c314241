"""The model bundle: the one contract between training (writer) and engine/plugin (reader).

A bundle is a directory, or the same content as one ``.zip``::

    manifest.json       this module's schema (SCHEMA_VERSION)
    text.onnx           text encoder: input_ids int64 [batch, context_length] -> embedding [batch, D]
    image_<mod>.onnx    one per image encoder: image float32 [batch, C, S, S] -> embedding [batch, D]
    *.fp16.onnx         optional half-precision twins for GPUs
    *.int8.onnx         optional int8 twins of image encoders for CPUs (dynamic quantisation), each with its
                        agreement with the fp32 graph measured at export on real tiles (``int8_agreement``)
    tokenizer.json      `tokenizers` format (CLIP BPE or the text tower's own tokenizer)

Every failure raises BundleError whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from .atomic import atomic_write_text  # also re-exported: the long-standing import path for writers
from .bands import MODALITIES, SENSOR_BANDS, ZERO_BAND, canonical_band
from .errors import BundleError
from .radiometry import UNITS, BandTransform
from .settings import cache_dir

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Keys written to every ONNX file's metadata_props (JSON values) so a bare file describes itself.
ONNX_META_PREFIX = "rsclip."
IMAGE_INPUT = "image"
TEXT_INPUT = "input_ids"
EMBEDDING_OUTPUT = "embedding"
# Optional dense outputs of an image encoder (training-free dense CLIP, issue 11): patch tokens [batch, N, D]
# and the class token of the modified last block [batch, D], both in the joint space, unnormalised.
PATCH_OUTPUT = "patch_embeddings"
DENSE_CLS_OUTPUT = "dense_cls"
DENSE_VARIANTS = ("segearth", "clearclip", "sclip", "naclip", "maskclip")
TOKENIZER_KINDS = ("clip-bpe", "hf")
# Limits on unpacking a bundle .zip (a download is untrusted): the total inflated size, and the ratio of
# inflated to compressed bytes once the total passes RATIO_FREE_BYTES. Real bundles are ONNX weights, which
# barely compress (measured ~1.1x for the default bundle); a ratio of 20 leaves room for text files while
# a zip bomb (1000x and more) is refused before anything is inflated.
MAX_UNZIPPED_BYTES = 8 << 30
MAX_ZIP_RATIO = 20.0
RATIO_FREE_BYTES = 16 << 20
_CHUNK = 1 << 20


@dataclass
class TextSpec:
    onnx: str
    tokenizer: str
    context_length: int
    languages: list[str]
    tokenizer_kind: str = "clip-bpe"
    sot_id: int = 49406
    eot_id: int = 49407
    pad_id: int = 0
    lowercase: bool = True
    onnx_fp16: Optional[str] = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> TextSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class EncoderSpec:
    modality: str
    onnx: str
    bands: list[str]
    transforms: list[BandTransform]
    units: str
    mean: list[float]
    std: list[float]
    input_size: int
    gsd_m: float
    tile_size_px: int
    onnx_fp16: Optional[str] = None
    onnx_int8: Optional[str] = None
    # Measured at export on real sample tiles (see engine/agreement.py): min_cosine, mean_cosine and
    # label_agreement of the int8 graph with the fp32 one, and what they were measured on. The runtime picks
    # int8 automatically only when label_agreement is recorded and high enough (runtime.INT8_MIN_AGREEMENT).
    int8_agreement: Optional[dict[str, Any]] = None
    # Dense outputs in the fp32/fp16 graphs: {"variant", "grid": [rows, cols], "outputs": {"patches": name,
    # "cls": name}}; None for encoders (and older bundles) without them, which label in tile mode.
    dense: Optional[dict[str, Any]] = None

    @property
    def dense_grid(self) -> Optional[tuple[int, int]]:
        return None if not self.dense else (int(self.dense["grid"][0]), int(self.dense["grid"][1]))

    def twins(self) -> dict[str, Optional[str]]:
        """Graph file per precision (None where the bundle has none)."""
        return {"fp32": self.onnx, "fp16": self.onnx_fp16, "int8": self.onnx_int8}

    @property
    def int8_label_agreement(self) -> Optional[float]:
        value = (self.int8_agreement or {}).get("label_agreement")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def tile_size_m(self) -> float:
        return self.tile_size_px * self.gsd_m

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["transforms"] = [t.to_dict() for t in self.transforms]
        if d.get("dense") is None:
            d.pop("dense", None)  # encoders without dense outputs keep the manifest they always had
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderSpec:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["transforms"] = [BandTransform.from_dict(t) for t in d.get("transforms", [])]
        return cls(**kw)


@dataclass
class Manifest:
    name: str
    embed_dim: int
    logit_scale: float
    text: TextSpec
    encoders: list[EncoderSpec]
    prompt_templates: dict[str, list[str]] = field(default_factory=lambda: {"en": ["a satellite image of {}."]})
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def encoder(self, modality: str) -> EncoderSpec:
        for e in self.encoders:
            if e.modality == modality:
                return e
        have = ", ".join(e.modality for e in self.encoders) or "none"
        raise BundleError(f"bundle {self.name!r} has no {modality!r} encoder (it has: {have}); choose a bundle with one")

    @property
    def modalities(self) -> list[str]:
        return [e.modality for e in self.encoders]

    def onnx_files(self) -> list[str]:
        out = [self.text.onnx] + ([self.text.onnx_fp16] if self.text.onnx_fp16 else [])
        for e in self.encoders:
            out.extend(rel for rel in e.twins().values() if rel)
        return out

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale,
            "text": self.text.to_dict(),
            "encoders": [e.to_dict() for e in self.encoders],
            "prompt_templates": self.prompt_templates,
            "provenance": self.provenance,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = MANIFEST) -> Manifest:
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{source}: no integer 'schema_version'; this is not an RS-CLIP bundle manifest")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{source}: schema version {version} is newer than this RS-CLIP understands ({SCHEMA_VERSION}); "
                "update the plugin/engine to read this bundle"
            )
        try:
            m = cls(
                name=d["name"],
                embed_dim=int(d["embed_dim"]),
                logit_scale=float(d["logit_scale"]),
                text=TextSpec.from_dict(d["text"]),
                encoders=[EncoderSpec.from_dict(e) for e in d["encoders"]],
                prompt_templates=d.get("prompt_templates") or {"en": ["{}"]},
                provenance=d.get("provenance", {}),
                files=d.get("files", {}),
                schema_version=version,
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{source}: missing or malformed field {exc}; re-export the bundle with rsclip-train export") from exc
        m.validate(source)
        return m

    def validate(self, source: str = MANIFEST) -> None:
        if self.embed_dim <= 0:
            raise BundleError(f"{source}: embed_dim must be positive, got {self.embed_dim}")
        if self.text.tokenizer_kind not in TOKENIZER_KINDS:
            raise BundleError(f"{source}: text.tokenizer_kind {self.text.tokenizer_kind!r} is not one of {TOKENIZER_KINDS}")
        if not self.text.languages:
            raise BundleError(f"{source}: text.languages is empty; list the languages the text encoder was trained on")
        if not self.encoders:
            raise BundleError(f"{source}: no image encoders; a bundle needs at least one")
        seen = set()
        for e in self.encoders:
            where = f"{source}: encoder {e.modality!r}"
            if e.modality not in MODALITIES:
                raise BundleError(f"{where}: unknown modality; use one of {', '.join(MODALITIES)}")
            if e.modality in seen:
                raise BundleError(f"{where}: listed twice; keep one encoder per modality")
            seen.add(e.modality)
            if not e.bands:
                raise BundleError(f"{where}: has no bands; list its input bands in order, e.g. {list(SENSOR_BANDS[e.modality])}")
            bad = [b for b in e.bands if b != ZERO_BAND and canonical_band(b) != b]
            if bad:
                raise BundleError(f"{where}: unknown band names {bad}; use canonical names such as B04, B8A, VV, red")
            n = len(e.bands)
            if not (len(e.transforms) == len(e.mean) == len(e.std) == n):
                raise BundleError(
                    f"{where}: {n} bands but {len(e.transforms)} transforms, {len(e.mean)} means, {len(e.std)} stds; give one per band"
                )
            if any(s == 0 for s in e.std):
                raise BundleError(f"{where}: a std of 0 would divide by zero")
            if e.units not in UNITS:
                raise BundleError(f"{where}: units {e.units!r} not one of {UNITS}")
            if e.input_size <= 0 or e.tile_size_px <= 0 or e.gsd_m <= 0:
                raise BundleError(f"{where}: input_size, tile_size_px and gsd_m must be positive")
            if e.int8_agreement is not None:
                agree = e.int8_agreement.get("label_agreement") if isinstance(e.int8_agreement, dict) else "?"
                if agree is not None and (not isinstance(agree, (int, float)) or isinstance(agree, bool)
                                          or not 0.0 <= agree <= 1.0):
                    raise BundleError(f"{where}: int8_agreement.label_agreement must be a fraction in [0, 1] or null, "
                                      f"got {agree!r}; re-export the bundle")
            if e.dense is not None:
                _check_dense(e.dense, where)
        for rel in [*self.onnx_files(), self.text.tokenizer, *self.files]:
            check_relative(rel, source)
        for lang, templates in self.prompt_templates.items():
            if not templates or any("{}" not in t for t in templates):
                raise BundleError(f"{source}: prompt templates for {lang!r} must each contain '{{}}' for the class name")


def _check_dense(dense: Any, where: str) -> None:
    fix = "re-export the bundle with rsclip-train export"
    if not isinstance(dense, dict):
        raise BundleError(f"{where}: 'dense' must be an object with variant, grid and outputs; {fix}")
    grid = dense.get("grid")
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
        raise BundleError(f"{where}: dense.grid must be two positive whole numbers [rows, cols], got {grid!r}; {fix}")
    outs = dense.get("outputs")
    if not isinstance(outs, dict) or not all(isinstance(outs.get(k), str) and outs[k] for k in ("patches", "cls")):
        raise BundleError(f"{where}: dense.outputs must name the 'patches' and 'cls' outputs, got {outs!r}; {fix}")
    if not isinstance(dense.get("variant"), str):
        raise BundleError(f"{where}: dense.variant must be a name such as 'segearth'; {fix}")


def check_relative(rel: object, source: str = MANIFEST) -> str:
    """A manifest file entry must be a plain relative path inside the bundle: no absolute path, drive or '..'.

    Checked on the text alone (no file system access), so nothing outside the bundle is ever opened.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise BundleError(f"{source}: file entry {rel!r} is not a file name; re-export the bundle")
    if _leaves_root(rel):
        raise BundleError(
            f"{source}: file entry {rel!r} points outside the bundle; every file of a bundle must be inside its "
            "folder (re-export the bundle, and do not use a bundle edited this way)"
        )
    return rel


def _leaves_root(name: str) -> bool:
    """True for a path that is absolute, has a drive, or climbs with '..' (either slash counts: Windows)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or bool(parts and ":" in parts[0]) or ".." in parts


def bundle_file(root: Path, rel: str, source: str = MANIFEST) -> Path:
    """``root / rel`` after checking it stays inside the bundle, also through symbolic links."""
    check_relative(rel, source)
    p = Path(root) / rel
    base = Path(root).resolve()
    try:
        p.resolve().relative_to(base)
    except ValueError:
        raise BundleError(
            f"{source}: file entry {rel!r} is a link to a file outside the bundle; copy the real file into the "
            "bundle folder instead of linking to it"
        ) from None
    return p


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Hash every file the manifest refers to and write manifest.json last (atomically)."""
    root = Path(root)
    manifest.validate()
    files = {}
    for rel in [*manifest.onnx_files(), manifest.text.tokenizer, *manifest.files]:
        p = bundle_file(root, rel)
        if not p.is_file():
            raise BundleError(f"{p}: listed in the manifest but not written; the exporter must write it first")
        files[rel] = sha256_file(p)
    manifest.files = dict(sorted(files.items()))
    atomic_write_text(root / MANIFEST, json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return manifest


def zip_bundle(root: Path, zip_path: Path) -> Path:
    """The bundle directory as one .zip (files at the archive root), written atomically."""
    root, zip_path = Path(root), Path(zip_path)
    manifest = read_manifest(root)
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in [MANIFEST, *manifest.files]:
                zf.write(root / rel, rel)
        os.replace(tmp, zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; a bundle directory must contain {MANIFEST} (export one with rsclip-train export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); re-export the bundle") from exc
    return Manifest.from_dict(data, source=str(path))


def safe_extract(zip_path: Path, dest: Path, *, max_bytes: int = MAX_UNZIPPED_BYTES,
                 max_ratio: float = MAX_ZIP_RATIO) -> None:
    """Extract an untrusted archive into ``dest``: a bundle from the internet must not write outside dest
    nor fill the disk.

    Refused before anything is written: absolute paths, drives, '..', links and other special entries, a
    declared total over ``max_bytes``, and a declared inflation ratio over ``max_ratio`` (past
    RATIO_FREE_BYTES). Declared sizes can lie, so bytes are also counted while inflating: an entry that
    inflates past its declared size, or a total past the limits, stops the extraction at once.
    """
    dest = Path(dest).resolve()
    zip_path = Path(zip_path)
    packed = max(zip_path.stat().st_size, 1)
    limit = _inflate_limit(packed, max_bytes, max_ratio)
    try:
        _extract_checked(zip_path, dest, packed, limit, max_bytes, max_ratio)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"{zip_path}: not a readable .zip archive ({exc}); download or copy it again") from exc


def _extract_checked(zip_path: Path, dest: Path, packed: int, limit: int, max_bytes: int, max_ratio: float) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_entry(zip_path, info, dest)
        declared = sum(i.file_size for i in infos)
        if declared > limit:
            raise BundleError(_too_big(zip_path, declared, packed, max_bytes, max_ratio))
        written = 0
        for info in infos:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            entry = 0
            with zf.open(info) as src, open(target, "wb") as out:
                while True:
                    block = src.read(_CHUNK)
                    if not block:
                        break
                    entry += len(block)
                    written += len(block)
                    if entry > info.file_size:
                        raise BundleError(
                            f"{zip_path}: entry {info.filename!r} inflates past its declared size "
                            f"({info.file_size} bytes); the archive is corrupt or hostile, refusing it"
                        )
                    if written > limit:
                        raise BundleError(_too_big(zip_path, written, packed, max_bytes, max_ratio))
                    out.write(block)


def _inflate_limit(packed: int, max_bytes: int, max_ratio: float) -> int:
    return int(min(max_bytes, max(RATIO_FREE_BYTES, packed * max_ratio)))


def _too_big(zip_path: Path, size: int, packed: int, max_bytes: int, max_ratio: float) -> str:
    return (
        f"{zip_path}: the archive inflates to {size / 2**20:.0f} MiB or more from {packed / 2**20:.1f} MiB "
        f"(limits: {max_bytes / 2**30:.0f} GiB in all, {max_ratio:.0f}x compression); a model bundle is "
        "mostly ONNX weights, which barely compress, so this is not a bundle: refusing it"
    )


def _check_entry(zip_path: Path, info: zipfile.ZipInfo, dest: Path) -> None:
    name = info.filename
    if _leaves_root(name) or not str((dest / name).resolve()).startswith(str(dest) + os.sep):
        raise BundleError(f"{zip_path}: entry {name!r} would be written outside the bundle; refusing this archive")
    mode = (info.external_attr >> 16) & 0o170000
    if mode == stat.S_IFLNK:
        raise BundleError(f"{zip_path}: entry {name!r} is a symbolic link; refusing this archive")
    if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise BundleError(f"{zip_path}: entry {name!r} is not a plain file (mode {oct(mode)}); refusing this archive")


@dataclass
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, rel: str) -> Path:
        return bundle_file(self.root, rel)

    @property
    def digest(self) -> str:
        """Identity of the bundle's content (hash of its manifest, which holds every file's sha256)."""
        return hashlib.sha256((self.root / MANIFEST).read_bytes()).hexdigest()

    def summary(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.root),
            "name": m.name,
            "schema_version": m.schema_version,
            "embed_dim": m.embed_dim,
            "logit_scale": m.logit_scale,
            "languages": m.text.languages,
            "context_length": m.text.context_length,
            "tokenizer_kind": m.text.tokenizer_kind,
            "encoders": [
                {
                    "modality": e.modality,
                    "bands": e.bands,
                    "input_size": e.input_size,
                    "gsd_m": e.gsd_m,
                    "tile_size_px": e.tile_size_px,
                    "units": e.units,
                    "fp16": bool(e.onnx_fp16),
                    "int8": bool(e.onnx_int8),
                    "int8_agreement": e.int8_agreement,
                    "dense": e.dense,  # None: tile mode only
                }
                for e in m.encoders
            ],
            "provenance": m.provenance,
            "size_bytes": sum(self.path(f).stat().st_size for f in m.files),
        }


def load_bundle(path: os.PathLike | str, verify: bool = True, check_onnx: bool = True) -> Bundle:
    """Open a bundle directory or .zip; verify file hashes and (optionally) the ONNX inputs against the manifest."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; give a bundle directory or .zip (rsclip-train export writes one)")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise BundleError(f"{path}: neither a bundle directory nor a .zip archive")
        root = _extract_cached(path)
    else:
        root = path
    manifest = read_manifest(root)
    for rel in [*manifest.onnx_files(), manifest.text.tokenizer, *manifest.files]:
        bundle_file(root, rel, str(Path(root) / MANIFEST))  # a link out of the bundle is refused before any read
    # Hashing and opening every ONNX file costs seconds for a ViT-B bundle; the plugin opens the same bundle
    # for every job, so a bundle whose files are unchanged (size, mtime) since this process checked it is
    # not checked again.
    key = str(Path(root).resolve())
    stamp = _file_stamp(root, manifest)
    done = _checked.get(key)
    done = done[1] if done and done[0] == stamp else set()
    if verify and "hashes" not in done:
        verify_files(root, manifest)
        done = done | {"hashes"}
    if check_onnx and "onnx" not in done:
        check_onnx_inputs(root, manifest)
        done = done | {"onnx"}
    _checked[key] = (stamp, done)
    return Bundle(root, manifest)


_checked: dict[str, tuple[tuple, set]] = {}


def _file_stamp(root: Path, manifest: Manifest) -> tuple:
    out = []
    for rel in [MANIFEST, *manifest.files]:
        try:
            st = (Path(root) / rel).stat()
            out.append((rel, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append((rel, None, None))
    return tuple(out)


def _extract_cached(zip_path: Path) -> Path:
    digest = sha256_file(zip_path)[:16]
    dest = cache_dir() / "bundles" / f"{zip_path.stem}-{digest}"
    if (dest / MANIFEST).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        safe_extract(zip_path, tmp)
        if not (tmp / MANIFEST).is_file():
            raise BundleError(f"{zip_path}: the archive has no {MANIFEST} at its root; zip the bundle directory's content")
        try:
            os.replace(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def verify_files(root: Path, manifest: Manifest) -> None:
    needed = set(manifest.onnx_files()) | {manifest.text.tokenizer}
    missing_hash = needed - set(manifest.files)
    if missing_hash:
        raise BundleError(f"{Path(root) / MANIFEST}: no sha256 for {sorted(missing_hash)}; re-export the bundle")
    for rel, want in manifest.files.items():
        p = bundle_file(root, rel, str(Path(root) / MANIFEST))
        if not p.is_file():
            raise BundleError(f"{p}: missing from the bundle; copy the complete bundle again or re-export it")
        got = sha256_file(p)
        if got != want:
            raise BundleError(
                f"{p}: sha256 mismatch (manifest {want[:12]}..., file {got[:12]}...): the file is corrupt or was "
                "changed; copy the bundle again or re-export it"
            )


def onnx_graph_io(path: Path) -> tuple[dict[str, tuple[str, list]], dict[str, tuple[str, list]], dict[str, str]]:
    """Inputs and outputs (name -> (type, shape), symbolic dimensions as strings) and custom metadata of an
    ONNX file, read from its graph through ONNX Runtime (no optimisation, nothing run)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export the bundle") from exc
    inputs = {i.name: (i.type, list(i.shape)) for i in sess.get_inputs()}
    outputs = {o.name: (o.type, list(o.shape)) for o in sess.get_outputs()}
    return inputs, outputs, dict(sess.get_modelmeta().custom_metadata_map)


def check_onnx_inputs(root: Path, manifest: Manifest) -> None:
    """Every ONNX file's input shape, and its embedding width (manifest ``embed_dim``), match the manifest."""
    root = Path(root)
    for e in manifest.encoders:
        for rel in filter(None, e.twins().values()):
            path = bundle_file(root, rel)
            inputs, outputs, _ = onnx_graph_io(path)
            _expect_input(path, inputs, IMAGE_INPUT, [len(e.bands), e.input_size, e.input_size])
            _expect_embed_dim(root, path, outputs, manifest, f"{e.modality} image encoder")
            if e.dense and rel != e.onnx_int8:  # the int8 twin's dense outputs are not used (see runtime)
                missing = [n for n in e.dense["outputs"].values() if n not in outputs]
                if missing:
                    raise BundleError(f"{path}: the manifest lists dense outputs {missing} the graph lacks; "
                                      "re-export the bundle")
    for rel in filter(None, [manifest.text.onnx, manifest.text.onnx_fp16]):
        path = bundle_file(root, rel)
        inputs, outputs, _ = onnx_graph_io(path)
        _expect_input(path, inputs, TEXT_INPUT, [manifest.text.context_length])
        _expect_embed_dim(root, path, outputs, manifest, "text encoder")


def _expect_embed_dim(root: Path, path: Path, outputs: dict, manifest: Manifest, role: str) -> None:
    """The encoder's (first) output is [batch, D]; D must be the manifest's embed_dim, or every job would
    fail later in a matrix product with a broadcast error naming neither the bundle nor the fix."""
    if not outputs:
        raise BundleError(f"{path}: the {role} has no output; re-export the bundle")
    name = EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in outputs else next(iter(outputs))
    shape = outputs[name][1]
    width = shape[-1] if shape else None
    if isinstance(width, int) and width != manifest.embed_dim:
        raise BundleError(
            f"bundle {manifest.name!r} ({root}): the {role} {path.name} outputs {width}-wide embeddings but "
            f"{MANIFEST} says embed_dim {manifest.embed_dim}; the manifest and the model disagree: re-export the "
            f"bundle (rsclip-train export), or set embed_dim to {width} if the ONNX file is the intended model"
        )


def _expect_input(path: Path, inputs: dict, name: str, tail: list[int]) -> None:
    if name not in inputs:
        raise BundleError(f"{path}: has inputs {list(inputs)} but the manifest expects {name!r}; re-export the bundle")
    _, shape = inputs[name]
    if len(shape) != len(tail) + 1 or [int(s) if isinstance(s, int) else s for s in shape[1:]] != tail:
        raise BundleError(
            f"{path}: input {name!r} has shape {shape} but the manifest says [batch, {', '.join(map(str, tail))}]; "
            "the manifest and the ONNX file disagree: re-export the bundle"
        )
