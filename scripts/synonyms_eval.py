"""Synonyms merged by mean vs max (and class names alone), tile and dense mode, on real labelled tiles.

EuroSAT RGB (``$RSCLIP_DATA`` or ../shared/data: eurosat_rgb_small, 10 classes x 10 tiles of 64 px) through a
bundle's rgb encoder (default: the embedded default bundle). Tile mode: accuracy of the tile's label; dense
mode: share of each tile's pixels given its class. The figures behind text.DEFAULT_SYNONYM_MERGE.

    PYTHONPATH=$PWD python scripts/synonyms_eval.py [BUNDLE]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from rs_clip_plugin.engine.classes import parse_classes
from rs_clip_plugin.engine.classify import dense_tile_logits
from rs_clip_plugin.engine.default_bundle import as_bundle
from rs_clip_plugin.engine.pipeline import preprocess_tile
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.runtime import EncoderSession
from rs_clip_plugin.engine.text import prompt_head

CLASSES = {
    "AnnualCrop": "annual crop|cropland|farmland", "Forest": "forest|woodland|trees",
    "HerbaceousVegetation": "herbaceous vegetation|shrubland|scrub", "Highway": "highway|road|motorway",
    "Industrial": "industrial buildings|factory|warehouses", "Pasture": "pasture|meadow|grazing land",
    "PermanentCrop": "permanent crop|orchard|vineyard", "Residential": "residential buildings|houses|town",
    "River": "river|stream", "SeaLake": "sea or lake|sea|lake",
}


def main(argv: list[str]) -> int:
    b = as_bundle(argv[0] if argv else None)
    root = Path(os.environ.get("RSCLIP_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    root = root / "eurosat_rgb_small"
    spec = b.manifest.encoder("rgb")
    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        for f in sorted((root / name).glob("*.jpg")):
            with open_source(f) as src:
                xs.append(preprocess_tile(src.read_for(spec, Window(0, 0, src.width, src.height)), spec))
            ys.append(k)
    if not xs:
        print(f"no EuroSAT tiles under {root}; set RSCLIP_DATA to the sample data folder", file=sys.stderr)
        return 2
    x, y = np.stack(xs), np.asarray(ys)
    out = EncoderSession(b, "rgb", provider="cpu", dense=True).embed_dense(x) if spec.dense else None
    runs = {"mean": (list(CLASSES.values()), "mean"), "max": (list(CLASSES.values()), "max"),
            "names only": ([v.split("|")[0] for v in CLASSES.values()], "mean")}
    for label, (classes, merge) in runs.items():
        head = prompt_head(b, parse_classes(classes), synonyms=merge)
        if out is None:
            pooled = EncoderSession(b, "rgb", provider="cpu").embed(x)
            print(f"{label}: tile accuracy {np.mean(head.merge(pooled @ head.vectors.T).argmax(1) == y):.3f}")
            continue
        tile = np.mean(head.merge(out.pooled @ head.vectors.T).argmax(1) == y)
        dense = np.mean([np.mean(dense_tile_logits(out.patches[i], out.cls[i], head, b.manifest.logit_scale,
                                                   spec.dense_grid, 64, 64).argmax(0) == y[i]) for i in range(len(y))])
        print(f"{label}: tile accuracy {tile:.3f}, dense pixel accuracy {dense:.3f} (n={len(y)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
