"""A real HTTP server on 127.0.0.1 with byte-range support, for GDAL's /vsicurl/ and STAC hrefs in tests.

Python's http.server answers every GET with the whole file; GDAL reads COGs with ``Range: bytes=a-b``
requests (and falls back to whole downloads otherwise), so this handler implements single ranges
(206 Partial Content) and records every request, letting tests check that reads were windowed.

The server runs in a child process, not a thread: rasterio holds the GIL while GDAL opens a dataset,
so a server thread of the same process could never answer GDAL's first request (a deadlock).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    root: Path
    log_path: Path

    @property
    def requests(self) -> list[tuple[str, str, str]]:
        """(method, path, Range header) of every request answered so far."""
        if not self.log_path.is_file():
            return []
        return [tuple(line.split("\t")) for line in self.log_path.read_text().splitlines() if line]  # type: ignore[misc]

    def href(self, path: Path) -> str:
        return f"{self.url}/{Path(path).relative_to(self.root).as_posix()}"


class _RangeHandler(SimpleHTTPRequestHandler):
    log_file = ""

    def _log(self, method: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(f"{method}\t{self.path}\t{self.headers.get('Range', '')}\n")

    def log_message(self, format: str, *args) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._log("HEAD")
        super().do_HEAD()

    def do_GET(self) -> None:
        rng = self.headers.get("Range", "")
        self._log("GET")
        m = _RANGE.match(rng.strip())
        path = Path(self.translate_path(self.path))
        if not m or not path.is_file():
            super().do_GET()
            return
        size = path.stat().st_size
        start = int(m.group(1)) if m.group(1) else max(0, size - int(m.group(2) or 0))
        end = min(int(m.group(2)), size - 1) if m.group(1) and m.group(2) else size - 1
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """A STAC API item search stand-in: POST /search answers with ``search.json`` from the served folder
        (the body, with the client's collections/bbox/datetime/limit, is logged as the Range field)."""
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0)).decode()
        with open(self.log_file, "a") as f:
            f.write(f"POST\t{self.path}\t{body}\n")
        path = Path(self.translate_path("/search.json"))
        if self.path.split("?")[0].rstrip("/").endswith("/search") and path.is_file():
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/geo+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)

    def end_headers(self) -> None:
        if self.command == "HEAD":
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Served]:
    """Serve ``root`` on a free loopback port (child process) for the duration of the block."""
    log = Path(tempfile.mkdtemp(prefix="rsclip-http-")) / "requests.tsv"
    proc = subprocess.Popen([sys.executable, "-m", "tests.http_support", os.fspath(root), os.fspath(log)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        port = int(proc.stdout.readline().strip())  # type: ignore[union-attr]
        yield Served(f"http://127.0.0.1:{port}", Path(root), log)
    finally:
        proc.terminate()
        proc.wait(10)


def _main(root: str, log: str) -> None:
    handler = type("Handler", (_RangeHandler,), {"log_file": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=root))
    print(server.server_address[1], flush=True)
    server.serve_forever()


def make_cogs(band_dir: Path, out_dir: Path, bands: list[str], window: tuple[int, int, int, int], name: str) -> list[Path]:
    """Per-band COGs (``out_dir/name/B04.tif``...) cut from the sample's band files at ``window`` (col,
    row, width, height on the 10 m grid; coarser bands cut at the matching window)."""
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    col, row, w, h = window
    out = out_dir / name
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    ref_res = None
    for b in bands:
        with rasterio.open(band_dir / f"{b}.tif") as ds:
            res = ds.transform.a
            ref_res = ref_res or res
            k = res / ref_res if ref_res else 1.0
            win = Window(int(col / k), int(row / k), max(1, int(w / k)), max(1, int(h / k)))
            data = ds.read(1, window=win)
            prof = {"driver": "COG", "dtype": data.dtype, "count": 1, "width": data.shape[1], "height": data.shape[0],
                    "crs": ds.crs, "transform": window_transform(win, ds.transform), "nodata": ds.nodata,
                    "blocksize": 128, "overview_resampling": "average"}
        p = out / f"{b}.tif"
        with rasterio.open(p, "w", **prof) as dst:
            dst.write(data, 1)
        paths.append(p)
    return paths


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])


_RGB = ["B04", "B03", "B02"]


def rgb_cog(major_tom_dir: Path, out: Path) -> Path:
    """One 3-band COG (B04, B03, B02 named in the band descriptions) cut from the sample scene."""
    import rasterio

    parts = make_cogs(major_tom_dir, out / "parts", _RGB, (256, 256, 192, 192), "crop")
    stack = [rasterio.open(p) for p in parts]
    prof = stack[0].profile | {"driver": "COG", "count": 3, "blocksize": 64}
    prof.pop("tiled", None), prof.pop("blockxsize", None), prof.pop("blockysize", None)
    path = out / "rgb.tif"
    with rasterio.open(path, "w", **prof) as dst:
        for i, ds in enumerate(stack, 1):
            dst.write(ds.read(1), i)
            dst.set_band_description(i, _RGB[i - 1])
    for ds in stack:
        ds.close()
    return path


def stac_item(item_id: str, when: str, band_files: dict[str, str], *, style: str = "earth-search",
              properties: Optional[dict] = None, bounds_from: Optional[Path] = None) -> dict:
    """A STAC Item (dict) for per-band assets. ``style`` "earth-search" keys assets by common name
    (``red``, ``nir08``) with eo:bands common names; "planetary" keys them ``B04`` with eo:bands names."""
    import rasterio
    from rasterio.warp import transform_bounds

    from rs_clip_plugin.engine.bands import S2_COMMON_NAMES

    common = {v: k for k, v in reversed(list(S2_COMMON_NAMES.items()))}  # B05 -> rededge1 (first listed wins)
    common.update({"B05": "rededge1", "B06": "rededge2", "B07": "rededge3"})
    assets = {}
    for band, href in band_files.items():
        cn = common.get(band, band.lower())
        key = cn if style == "earth-search" else band
        eo = {"name": cn if style == "earth-search" else band, "common_name": cn}
        assets[key] = {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], "eo:bands": [eo]}
    assets["thumbnail"] = {"href": "thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    bbox = [0.0, 0.0, 1.0, 1.0]
    if bounds_from is not None:
        with rasterio.open(bounds_from) as ds:
            bbox = list(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
    x0, y0, x1, y1 = bbox
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "bbox": bbox,
        "properties": {"datetime": when, "platform": "sentinel-2b", **(properties or {})},
        "collection": "sentinel-2-l2a", "links": [], "assets": assets,
    }
