"""The README's tile-vs-dense picture: the sample scene labelled in tile and in dense mode, side by side.

Runs ``bench.dense_vs_tile`` (the same figures `rsclip bench` reports: whole classify jobs, best of N rounds, and
the tile-sized blocks whose labels are not uniform) and draws true colour | tile mode | dense mode with the
timings in the titles. Prints the figures as JSON.

    .venv/bin/python scripts/dense_vs_tile_figure.py [--bundle B] [--raster R] [--out docs/screenshots/dense_vs_tile.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="bundle folder or .zip (default: the embedded default bundle)")
    p.add_argument("--raster", type=Path, help="a Sentinel-2 band folder (default: the Major-TOM sample)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "dense_vs_tile.png")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from rs_clip_plugin.engine.bench import dense_vs_tile
    from rs_clip_plugin.engine.demo import _hex_rgba, _true_colour
    from rs_clip_plugin.engine.settings import require_sample

    raster = args.raster or next(p for p in sorted(require_sample("major_tom_s2l2a").iterdir()) if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="rsclip-dvt-") as d:
        r = dense_vs_tile(args.bundle, raster, rounds=args.rounds, keep=Path(d))
        if r["skipped"]:
            print(f"skipped: {r['skipped']}", file=sys.stderr)
            return 1
        summary = json.loads((Path(d) / "dense" / "summary.json").read_text())
        maps = {}
        for mode in ("tile", "dense"):
            with rasterio.open(Path(d) / mode / "labels.tif") as ds:
                b = ds.bounds
                maps[mode] = (ds.read(1), (b.left, b.right, b.bottom, b.top))
    classes = summary["classes"]
    colours = [(0.0, 0.0, 0.0, 0.0), *(_hex_rgba(c["color"]) for c in classes)]
    cmap = ListedColormap(colours)
    rgb, extent = _true_colour(raster)
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.6), dpi=100)
    axes[0].imshow(rgb, extent=extent)
    axes[0].set_title("True colour (B4, B3, B2)")
    for ax, mode in zip(axes[1:], ("tile", "dense")):
        labels, ext = maps[mode]
        m = r[mode]
        ax.imshow(labels, extent=ext, cmap=cmap, vmin=0, vmax=len(colours) - 1, interpolation="nearest")
        what = "one label per 64 px tile" if mode == "tile" else f"{r['dense_variant']} patch logits"
        ax.set_title(f"{mode} mode ({what}): {m['seconds']:.2f} s\n"
                     f"{m['nonuniform_blocks']} of {m['blocks']} tile-sized blocks hold more than one label")
    handles = [Patch(facecolor=colours[i + 1], edgecolor="black", label=c["name"]) for i, c in enumerate(classes)]
    axes[2].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    for a in axes:
        a.ticklabel_format(style="plain", useOffset=False)
        a.tick_params(labelsize=7)
    fig.suptitle(f"{summary['bundle']['name']}, {r['modality']} encoder, {summary['device_description']}, fp32: "
                 f"dense / tile = {r['dense_over_tile']:.2f}", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    print(json.dumps({**r, "figure": str(args.out)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
