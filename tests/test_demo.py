"""The main job (`rsclip demo` / `make demo`) and the embedded default bundle it runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_clip_plugin.engine.bundle import load_bundle
from rs_clip_plugin.engine.demo import demo_scene, eurosat_classes, run_demo


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_demo_writes_every_output_on_the_scene_grid(tiny_bundle: Path, tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "demo-output"
    res = run_demo(out, bundle_path=tiny_bundle, top_k=3)
    names = set(res.files)
    assert {"labels.tif", "labels.qml", "confidence.tif", "summary.json", "hits.gpkg", "preview.png", "demo.json"} <= names
    assert any(n.startswith("heatmap") and n.endswith(".tif") for n in names)

    scene = demo_scene()
    with rasterio.open(scene / "B04.tif") as ref, rasterio.open(out / "labels.tif") as lab:
        assert lab.crs == ref.crs
        assert lab.transform.almost_equals(ref.transform)
        assert (lab.width, lab.height) == (ref.width, ref.height)
        labels = lab.read(1)
    assert labels.max() <= len(eurosat_classes())
    assert np.count_nonzero(labels) > 0.9 * labels.size  # the scene has no nodata to speak of

    w, h = _png_size(out / "preview.png")
    assert w >= 1000 and h >= 500
    summary = json.loads((out / "demo.json").read_text())
    assert summary["provider"] == "CPUExecutionProvider"
    assert [c["name"] for c in summary["classes"]] == eurosat_classes()
    assert 1 <= len(summary["hits"]) <= 3
    assert not list(tmp_path.glob(".*partial"))


def test_demo_replaces_its_own_output_but_refuses_a_foreign_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    run_demo(out, bundle_path=tiny_bundle, top_k=2)
    (out / "stale.txt").write_text("left by an older version")
    (out / "demo.json").write_text("{}")
    run_demo(out, bundle_path=tiny_bundle, top_k=2)
    assert not (out / "stale.txt").exists()  # the folder was replaced, not written over
    assert json.loads((out / "demo.json").read_text())["hits"]
    assert not list(tmp_path.glob(".demo-output*"))  # no staging or set-aside folder left

    foreign = tmp_path / "my-work"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an earlier demo output"):
        run_demo(foreign, bundle_path=tiny_bundle, top_k=2)
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]


@pytest.mark.slow
def test_rsclip_demo_cli_builds_and_uses_the_default_bundle(tmp_path: Path) -> None:
    """The README's main command on the embedded default bundle (built once per recipe, then cached)."""
    env = dict(os.environ)
    env.pop("RSCLIP_BUNDLE", None)
    out = tmp_path / "demo-output"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("rsclip")), "demo", "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["provider"] == "CPUExecutionProvider"
    assert "trained" in result["bundle_description"].lower()

    bundle = load_bundle(result["bundle_path"])
    assert {"rgb", "s2-l1c", "s2-l2a", "s1-grd"} <= set(bundle.manifest.modalities)
    assert bundle.manifest.provenance.get("metrics"), "the default bundle must state its measured accuracy"
    assert (out / "preview.png").is_file() and (out / "hits.gpkg").is_file()


def test_stale_default_bundle_builds_are_pruned_but_in_progress_ones_kept(tmp_path: Path) -> None:
    from rs_clip_plugin.engine.default_bundle import _prune_stale

    for name in ("old1", "current", ".current.inprogress"):
        (tmp_path / name / "bundle").mkdir(parents=True)
        (tmp_path / name / "bundle" / "manifest.json").write_text("{}")
    (tmp_path / "unrelated").mkdir()
    _prune_stale(tmp_path / "current")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".current.inprogress", "current", "unrelated"]
