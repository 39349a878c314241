"""The model bundle: the one contract between training (writer) and engine/plugin (reader).

A bundle is a directory, or the same content as one ``.zip``::

    manifest.json       this module's schema (SCHEMA_VERSION)
    text.onnx           text encoder: input_ids int64 [batch, context_length] -> embedding [batch, D]
    image_<mod>.onnx    one per image encoder: image float32 [batch, C, S, S] -> embedding [batch, D]
    *.fp16.onnx         optional half-precision twins for GPUs
    tokenizer.json      `tokenizers` format (CLIP BPE or the text tower's own tokenizer)

Every failure raises BundleError whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
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
TOKENIZER_KINDS = ("clip-bpe", "hf")


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

    @property
    def tile_size_m(self) -> float:
        return self.tile_size_px * self.gsd_m

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["transforms"] = [t.to_dict() for t in self.transforms]
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
            out.append(e.onnx)
            if e.onnx_fp16:
                out.append(e.onnx_fp16)
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
        for lang, templates in self.prompt_templates.items():
            if not templates or any("{}" not in t for t in templates):
                raise BundleError(f"{source}: prompt templates for {lang!r} must each contain '{{}}' for the class name")


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
        p = root / rel
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


def safe_extract(zip_path: Path, dest: Path) -> None:
    """Extract refusing absolute paths, '..' and links: a bundle from the internet must not write outside dest."""
    dest = Path(dest).resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if info.filename.startswith(("/", "\\")) or not str(target).startswith(str(dest) + os.sep):
                raise BundleError(f"{zip_path}: entry {info.filename!r} would be written outside the bundle; refusing this archive")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise BundleError(f"{zip_path}: entry {info.filename!r} is a symbolic link; refusing this archive")
        zf.extractall(dest)


@dataclass
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, rel: str) -> Path:
        return self.root / rel

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
                }
                for e in m.encoders
            ],
            "provenance": m.provenance,
            "size_bytes": sum((self.root / f).stat().st_size for f in m.files),
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
        p = Path(root) / rel
        if not p.is_file():
            raise BundleError(f"{p}: missing from the bundle; copy the complete bundle again or re-export it")
        got = sha256_file(p)
        if got != want:
            raise BundleError(
                f"{p}: sha256 mismatch (manifest {want[:12]}..., file {got[:12]}...): the file is corrupt or was "
                "changed; copy the bundle again or re-export it"
            )


def onnx_io(path: Path) -> tuple[dict[str, tuple[str, list]], dict[str, str]]:
    """Inputs (name -> (type, shape)) and custom metadata of an ONNX file, read through ONNX Runtime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export the bundle") from exc
    inputs = {i.name: (i.type, list(i.shape)) for i in sess.get_inputs()}
    return inputs, dict(sess.get_modelmeta().custom_metadata_map)


def check_onnx_inputs(root: Path, manifest: Manifest) -> None:
    root = Path(root)
    for e in manifest.encoders:
        for rel in filter(None, [e.onnx, e.onnx_fp16]):
            inputs, _ = onnx_io(root / rel)
            _expect_input(root / rel, inputs, IMAGE_INPUT, [len(e.bands), e.input_size, e.input_size])
    for rel in filter(None, [manifest.text.onnx, manifest.text.onnx_fp16]):
        inputs, _ = onnx_io(root / rel)
        _expect_input(root / rel, inputs, TEXT_INPUT, [manifest.text.context_length])


def _expect_input(path: Path, inputs: dict, name: str, tail: list[int]) -> None:
    if name not in inputs:
        raise BundleError(f"{path}: has inputs {list(inputs)} but the manifest expects {name!r}; re-export the bundle")
    _, shape = inputs[name]
    if len(shape) != len(tail) + 1 or [int(s) if isinstance(s, int) else s for s in shape[1:]] != tail:
        raise BundleError(
            f"{path}: input {name!r} has shape {shape} but the manifest says [batch, {', '.join(map(str, tail))}]; "
            "the manifest and the ONNX file disagree: re-export the bundle"
        )
