"""Acceptance: the plugin zip as analysts get it, installed into a fresh QGIS 3.22 profile, used with the mouse.

One real QGIS desktop (Debian's /usr/bin/qgis under Xvfb) runs ``driver.py``, which plays every scenario of
issue 10 in sequence through widgets only and writes results.json plus a screenshot per scenario. Each
test below asserts one scenario of that run. Artefacts (screenshots, results.json, QGIS's message log,
stdout/stderr) are copied to tests/acceptance/artifacts/ (git-ignored) and the path is printed.

Engine packages: see ``harness.engine_packages_folder`` for why a PYTHONPATH folder of links to only
onnxruntime, tokenizers, rasterio (and what they need that QGIS's Python lacks) stands in for the
plugin's dependency installer here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import acceptance_harness as harness
import pytest
from plugin_support import s2_crop, stack_bands

pytestmark = [pytest.mark.qgis, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
QGIS_TIMEOUT_S = 150  # the whole desktop run; the suite's budget is 3 minutes


def _b04_crop(scene: Path, out: Path, size: int = 192, col: int = 300, row: int = 500) -> Path:
    """A 1-band raster as Sentinel-2 downloads come (B04.tif): no encoder of a bundle can read it alone."""
    import rasterio
    from rasterio.windows import Window

    window = Window(col, row, size, size)
    with rasterio.open(scene / "B04.tif") as ds:
        profile = ds.profile.copy()
        profile.update(width=size, height=size, transform=ds.window_transform(window), tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        data = ds.read(1, window=window)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data, 1)
    return out


def _full_stack(scene: Path, data: Path, size: int = 192, col: int = 300, row: int = 500) -> tuple[Path, Path]:
    """All twelve L2A bands on the 10 m grid: the whole scene (large) and a crop of it (small)."""
    import rasterio
    from rasterio.windows import Window

    bands = sorted((p.stem for p in scene.glob("B*.tif")), key=lambda b: (b != "B02", b))  # a 10 m band first
    full = stack_bands({b: scene / f"{b}.tif" for b in bands}, data / "s2_full_stack.tif")
    window = Window(col, row, size, size)
    with rasterio.open(full) as ds:
        profile = ds.profile.copy()
        profile.update(width=size, height=size, transform=ds.window_transform(window))
        arr, names = ds.read(window=window), ds.descriptions
    small = data / "s2_full_stack_crop.tif"
    with rasterio.open(small, "w", **profile) as dst:
        dst.write(arr)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return full, small


@pytest.fixture(scope="session")
def plugin_zip() -> Path:
    return harness.build_zip()


@pytest.fixture(scope="session")
def acceptance_base() -> Iterator[Path]:
    """A folder of our own: pytest's numbered temp folders are pruned by concurrent pytest sessions, which
    must not pull the profile from under a running QGIS."""
    base = Path(tempfile.mkdtemp(prefix="rsclip-acceptance-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def qgis_run(plugin_zip: Path, major_tom_dir: Path, tiny_bundle: Path, acceptance_base: Path) -> dict:
    if not harness.QGIS_BIN.is_file() or shutil.which("xvfb-run") is None:
        pytest.skip("the acceptance suite needs Debian's QGIS (/usr/bin/qgis) and xvfb-run")
    base = acceptance_base
    profiles = base / "profiles"
    plugin_dir = harness.install_from_zip(plugin_zip, profiles)
    packages, linked = harness.engine_packages_folder(base / "engine-packages")
    data = base / "data"
    rasters = {
        "s2": str(s2_crop(major_tom_dir, data / "s2_crop.tif")),
        "b04": str(_b04_crop(major_tom_dir, data / "B04.tif")),
    }
    # All bands: what the default bundle's Sentinel-2 encoder reads today; the whole scene is large enough
    # that a run is still going when Cancel is pressed.
    rasters["full"], rasters["full_small"] = (str(p) for p in _full_stack(major_tom_dir, data))
    bundles = base / "bundles"  # the tiny bundle copied out of pytest's temp folder (see acceptance_base)
    shutil.copytree(tiny_bundle, bundles / tiny_bundle.name)
    tiny_bundle = bundles / tiny_bundle.name
    tiny_zip = shutil.make_archive(str(bundles / f"{tiny_bundle.name}-zip"), "zip", bundles, tiny_bundle.name)
    eurosat = json.loads((plugin_dir / "resources" / "classnames" / "eurosat.json").read_text())
    artifacts = base / "artifacts"
    config = base / "config.json"
    config.write_text(json.dumps({
        "artifacts": str(artifacts),
        "plugin_dir": str(plugin_dir),
        "profile_dir": str(profiles / "profiles" / harness.PROFILE),
        "rasters": rasters,
        "processing_out": str(base / "processing-out"),
        "tiny_bundle_dir": str(tiny_bundle),
        "tiny_bundle_zip": tiny_zip,
        "tiny_bundle_name": json.loads((tiny_bundle / "manifest.json").read_text())["name"],
        "eurosat_en": eurosat["en"],
    }, indent=1))
    env = harness.clean_env(base, packages, config)
    run = harness.run_qgis(base, profiles, HERE / "driver.py", env, QGIS_TIMEOUT_S)
    run["results"] = harness.read_json(artifacts / "results.json")
    run["linked_packages"] = linked
    run["default_bundle_home"] = Path(env["RSCLIP_DEFAULT_BUNDLE_HOME"])
    if artifacts.is_dir():
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        harness.copy_artifacts(artifacts, ARTIFACTS)
    for name in ("qgis-stdout.txt", "qgis-stderr.txt", "config.json"):
        if (base / name).is_file():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base / name, ARTIFACTS / name)
    print(f"\nacceptance artefacts: {ARTIFACTS} (QGIS ran {run['seconds']:.0f} s, rc {run['rc']})")
    return run


def _results(run: dict) -> dict:
    res = run["results"]
    if res is None:
        pytest.fail(f"QGIS wrote no results (rc {run['rc']}, {run['seconds']:.0f} s); stderr tail:\n{run['stderr'][-3000:]}")
    return res


def _scenario(run: dict, name: str) -> dict:
    rec = _results(run)["scenarios"].get(name)
    if rec is None:
        pytest.fail(f"scenario {name} never ran (QGIS rc {run['rc']}); stderr tail:\n{run['stderr'][-2000:]}")
    return rec


def _assert_ok(run: dict, name: str) -> dict:
    rec = _scenario(run, name)
    details = json.dumps(rec.get("details", {}), indent=1, default=str)[:3000]
    assert rec["ok"], f"{name}: {rec.get('error')}\nmessage bar: {rec.get('message_bar')}\ndetails: {details}"
    return rec


def test_zip_ships_a_model(plugin_zip: Path) -> None:
    """The zip carries a bundle (a manifest.json inside the plugin folder): a zip user has a model offline."""
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
    assert any(n.startswith("rs_clip_plugin/") and n.endswith("/manifest.json") for n in names), names[:20]


def test_qgis_ran_to_the_end(qgis_run: dict) -> None:
    res = _results(qgis_run)
    assert qgis_run["rc"] == 0, f"QGIS exited with {qgis_run['rc']} after {qgis_run['seconds']:.0f} s"
    assert res.get("finished"), "the driver did not finish all scenarios"


def test_startup_from_the_zip_only(qgis_run: dict) -> None:
    rec = _assert_ok(qgis_run, "00_startup")
    assert not rec["details"]["checkout_importable"]


def test_classify_button_works_on_first_click(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "01_classify_first_click")


def test_classify_adds_paletted_layer_with_class_names(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "02_classify_result_layer")


def test_classify_all_bands_adds_paletted_layer(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "02b_classify_all_bands")


def test_cancel_mid_run_adds_nothing(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "03_classify_cancel")


def test_processing_results_are_styled(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "04_processing_styled")


def test_search_with_every_raster_ticked(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "05_search_all_ticked")


def test_second_search_replaces_the_first(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "05b_search_again_replaces")


def test_find_similar_by_map_click(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "06_find_similar_map_click")


def test_model_manager_add_and_remove(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "07_model_manager_add_remove")


def test_zip_default_bundle_used_offline(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "08_default_bundle_offline")
    home = qgis_run["default_bundle_home"]
    assert not (home.exists() and any(home.rglob("manifest.json"))), f"a default bundle was built in {home}"


def test_gui_wording_names_fields_not_cli_flags(qgis_run: dict) -> None:
    _assert_ok(qgis_run, "09_gui_wording")


def test_no_python_error_in_qgis(qgis_run: dict) -> None:
    """No traceback in QGIS's message log (Python error tab included) nor on its stderr."""
    res = _results(qgis_run)
    errors = list(res.get("python_errors") or [])
    errors += [e["message"] for e in res.get("log", []) if e.get("level", 0) >= 2 and "Traceback" in e["message"]]
    if "Traceback (most recent call last)" in qgis_run["stderr"]:
        errors.append(qgis_run["stderr"][qgis_run["stderr"].index("Traceback"):][:3000])
    assert not errors, "\n\n".join(errors)[:6000]


def test_no_widget_found_only_by_text(qgis_run: dict) -> None:
    """Every widget the suite uses has a stable objectName (texts change with wording and translations)."""
    missing = _results(qgis_run).get("missing_object_names", [])
    assert not missing, "widgets without the expected objectName:\n" + "\n".join(missing)

