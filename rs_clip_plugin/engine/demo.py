"""The main job, `rsclip demo` / `make demo`: label a real Sentinel-2 scene by prompt and search it.

It runs the same engine functions as `rsclip classify` and `rsclip search` on the Major-TOM L2A crop in
the sample data, with the EuroSAT class list, and draws a preview a person can open.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import staged_dir
from .bands import S2_QUANTIFICATION, S2_TRUE_COLOUR
from .classes import hex_to_rgb
from .progress import Progress
from .resources import classnames
from .settings import require_sample

DEMO_QUERY = "a river"
DEMO_TOP_K = 5
# Tiles overlapping by half: each pixel's label averages four tiles' logits, so edges follow the scene.
DEMO_OVERLAP = 0.5


@dataclass
class DemoResult:
    out_dir: Path
    files: dict[str, str]
    summary: dict


def eurosat_classes(lang: str = "en") -> list[str]:
    return classnames("eurosat", lang)


def demo_scene() -> Path:
    root = require_sample("major_tom_s2l2a")
    scenes = sorted(p for p in root.iterdir() if p.is_dir())
    if not scenes:
        raise FileNotFoundError(f"{root}: no scene folder inside; see the sample data README")
    return scenes[0]


def _check_replaceable(out_dir: Path) -> None:
    """The demo replaces its own earlier output folder (it holds demo.json), and nothing else."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "demo.json").is_file():
        raise ValueError(
            f"{out_dir} exists and is not an earlier demo output; choose another --out or empty that folder"
        )


def run_demo(
    out_dir: Path,
    *,
    bundle_path: Optional[Path] = None,
    provider: str = "auto",
    query: str = DEMO_QUERY,
    top_k: int = DEMO_TOP_K,
    progress: Optional[Progress] = None,
) -> DemoResult:
    from .bundle import load_bundle
    from .classes import parse_classes
    from .classify import ClassifyJob, classify_into
    from .default_bundle import default_bundle_path
    from .options import JobOptions, RunOptions, TilingOptions
    from .search import SearchJob, search_into, text_query_vector

    progress = progress or Progress()
    out_dir = Path(out_dir)
    bundle = load_bundle(bundle_path or default_bundle_path())
    t0 = time.perf_counter()
    scene = demo_scene()
    classes = eurosat_classes()

    _check_replaceable(out_dir)
    # The demo folder is the demo's own: built beside it and swapped in whole (atomic.py: staged_dir), so a
    # re-run replaces it and a failed run leaves the earlier one. Paths recorded inside are the final ones.
    with staged_dir(out_dir) as staging:
        options = JobOptions(tiling=TilingOptions(overlap=DEMO_OVERLAP), run=RunOptions(provider=provider))
        classified = classify_into(scene, ClassifyJob(tuple(parse_classes(classes)), bundle, options=options),
                                   staging, out_dir, progress.sub(0.0, 0.6))
        qvec = text_query_vector(bundle, query, provider=provider)
        found = search_into([scene], qvec, SearchJob(bundle, top_k, heatmap=True, query_info={"text": query},
                                                     options=options), staging, out_dir, progress.sub(0.6, 0.95))
        preview = staging / "preview.png"
        render_preview(scene, staging / "labels.tif", classified.summary, found.hits, preview, query=query)
        summary = {
            "bundle": bundle.manifest.name,
            "bundle_path": str(bundle.root),
            "bundle_description": bundle.manifest.provenance.get("description", ""),
            "scene": str(scene),
            "classes": classified.summary.get("classes"),
            "provider": classified.summary.get("provider"),
            "device_description": classified.summary.get("device_description"),
            "query": query,
            "hits": [
                {"rank": h.rank, "score": round(float(h.score), 4), "bounds": [round(v, 1) for v in h.bounds]}
                for h in found.hits
            ],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (staging / "demo.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        _check_replaceable(out_dir)
    files = {p.name: str(p) for p in sorted(out_dir.iterdir())}
    progress.update(1.0, "done")
    return DemoResult(out_dir, files, summary)


def _true_colour(scene: Path, max_px: int = 800) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Decimated true-colour RGB in [0, 1] and its bounds (xmin, xmax, ymin, ymax) for imshow."""
    import rasterio
    from rasterio.enums import Resampling

    bands = []
    bounds = None
    for name in (S2_TRUE_COLOUR["red"], S2_TRUE_COLOUR["green"], S2_TRUE_COLOUR["blue"]):
        with rasterio.open(scene / f"{name}.tif") as ds:
            f = max(1, int(np.ceil(max(ds.width, ds.height) / max_px)))
            arr = ds.read(1, out_shape=(ds.height // f, ds.width // f), resampling=Resampling.average).astype(np.float32)
            b = ds.bounds
            bounds = (b.left, b.right, b.bottom, b.top)
        bands.append(arr)
    rgb = np.stack(bands, axis=-1) / S2_QUANTIFICATION
    # A percentile stretch, as an analyst's viewer would do, so the scene is readable.
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1), bounds


def _hex_rgba(colour: str) -> tuple[float, float, float, float]:
    return (*(c / 255 for c in hex_to_rgb(colour)), 1.0)


def render_preview(scene: Path, labels_tif: Path, summary: dict, hits: list, out_png: Path, query: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    rgb, extent = _true_colour(scene)
    with rasterio.open(labels_tif) as ds:
        labels = ds.read(1)
        b = ds.bounds
        lab_extent = (b.left, b.right, b.bottom, b.top)
    classes = summary.get("classes") or []
    colours = [(0.0, 0.0, 0.0, 0.0), *(_hex_rgba(c["color"]) for c in classes)]
    cmap = ListedColormap(colours)

    fig, axes = plt.subplots(1, 2, figsize=(14, 7.2), dpi=100)
    ax = axes[0]
    ax.imshow(rgb, extent=extent)
    for h in hits:
        xmin, ymin, xmax, ymax = h.bounds
        ax.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, edgecolor="yellow", linewidth=2))
        ax.text(xmin, ymax, f"#{h.rank} {h.score:.2f}", color="black", fontsize=8, va="bottom",
                bbox={"facecolor": "yellow", "edgecolor": "none", "pad": 1})
    ax.set_title(f"True colour (B4, B3, B2) with the top {len(hits)} hits for \u201c{query}\u201d")
    ax = axes[1]
    ax.imshow(labels, extent=lab_extent, cmap=cmap, vmin=0, vmax=len(colours) - 1, interpolation="nearest")
    ax.set_title("Zero-shot labels (EuroSAT classes)")
    total = sum(c.get("area_ha", 0.0) for c in classes) or 1.0
    handles = [
        Patch(facecolor=colours[i + 1], edgecolor="black", label=f"{c['name']} ({100 * c.get('area_ha', 0.0) / total:.0f}%)")
        for i, c in enumerate(classes)
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    for a in axes:
        a.ticklabel_format(style="plain", useOffset=False)
        a.tick_params(labelsize=7)
    device = summary.get("device_description") or summary.get("provider", "?")
    fig.suptitle(f"RS-CLIP demo on {scene.name[:60]}  -  {device}", fontsize=11)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
