"""Faults and bad input around outputs (issue 15): other file systems, publishing as one unit, concurrent
writers, I/O failures, SIGKILL leftovers, rasters without data.

Real file systems (tmpfs mounts: a second device, a read-only one, a full one), real `rsclip` processes
(killed with SIGKILL, run side by side), real GeoTIFFs (a COG cut short). Mounting needs root; without it
those tests skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rs_clip_plugin.engine.atomic import JOURNAL, OutputFolder, clean_stale
from rs_clip_plugin.engine.classify import classify_raster
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import InputError, OutputError, OutputExistsError
from rs_clip_plugin.engine.options import RunOptions, TilingOptions, split_options
from rs_clip_plugin.engine.writers import read_class_legend

REPO = Path(__file__).resolve().parents[1]


def _rgb(path: Path, size: int = 256, seed: int = 0, fill: float | None = None, dtype: str = "uint8") -> Path:
    """A real 3-band COG (deflate, 256 px blocks); ``fill`` makes every pixel that value (no data)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 255, size=(3, size, size)).astype(dtype)
    nodata = 0 if dtype == "uint8" else float("nan")
    if fill is not None:
        data[:] = fill
    with rasterio.open(path, "w", driver="COG", width=size, height=size, count=3, dtype=dtype, nodata=nodata,
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), compress="deflate",
                       blocksize=256) as ds:
        ds.write(data)
    return path


@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "16m", options: str = "") -> Iterator[Path]:
    """A fresh tmpfs mounted at ``where``: another file system (device) than the test's temporary folder."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _set(out: Path) -> dict:
    """What an output folder says it is: class names of the raster's legend, of summary.json and of the .qml."""
    legend = read_class_legend(out / "labels.tif")["names"][1:]
    summary = [c["name"] for c in json.loads((out / "summary.json").read_text())["classes"]]
    qml = (out / "labels.qml").read_text()
    return {"legend": legend, "summary": summary, "qml_ok": all(f'label="{n}"' in qml for n in summary)}


def _one_line_error(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"rsclip {command}: error:"), err
    assert "Traceback" not in err
    return lines[0]


def _rsclip(*args: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "rs_clip_plugin.engine.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e)


# --- 1. --out on another file system ------------------------------------------------------------------
def test_out_on_another_file_system_and_at_its_mount_point(bundle, tmp_path: Path) -> None:
    src = _rgb(tmp_path / "rgb.tif")
    with _tmpfs(tmp_path / "mnt") as mnt:
        assert os.stat(mnt).st_dev != os.stat(tmp_path).st_dev
        # --out is the mount point itself (a Docker volume, a USB drive): staging beside it would be on the
        # parent's file system, and the rename would cross devices.
        res = classify_raster(src, "a;b", mnt, bundle=bundle, provider="cpu")
        assert sorted(p.name for p in mnt.iterdir()) == ["confidence.tif", "labels.qml", "labels.tif",
                                                         "labels.tif.aux.xml", "summary.json"]
        assert os.stat(res.labels_path).st_dev == os.stat(mnt).st_dev
        assert res.summary["files"]["labels"] == str(mnt / "labels.tif")  # final paths, not staging ones
        assert json.loads((mnt / "summary.json").read_text())["files"]["summary"] == str(mnt / "summary.json")
        res = classify_raster(src, "c;d;e", mnt, bundle=bundle, provider="cpu", overwrite=True)
        assert _set(mnt) == {"legend": ["c", "d", "e"], "summary": ["c", "d", "e"], "qml_ok": True}
        # A new folder on the other file system, through the CLI, and a search beside the classification.
        rc = main(["search", str(src), "--query", "river", "--out", str(mnt), "--bundle", str(bundle.root),
                   "--provider", "cpu", "--heatmap"])
        assert rc == 0 and (mnt / "hits.gpkg").is_file() and (mnt / "heatmap.tif").is_file()
        assert not [p.name for p in mnt.iterdir() if p.name.startswith(".")]
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- 2. one unit, one writer --------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_failure_while_publishing_leaves_the_old_set_or_the_new_never_a_mix(bundle, tmp_path: Path, monkeypatch,
                                                                               failure) -> None:
    src = _rgb(tmp_path / "rgb.tif")
    out = tmp_path / "out"
    classify_raster(src, "a;b", out, bundle=bundle, provider="cpu")
    (out / "notes.txt").write_text("mine")  # a user's file in the output folder: never touched
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace
    outcomes = set()
    for n in range(1, 12):
        calls = {"n": 0}

        def failing_replace(a, b, _n=n, _calls=calls):
            # Count only moves into or out of the output folder itself: the publishing step.
            if Path(a).parent == out or Path(b).parent == out:
                _calls["n"] += 1
                if _calls["n"] == _n:
                    raise failure
            return real_replace(a, b)

        monkeypatch.setattr(os, "replace", failing_replace)
        try:
            classify_raster(src, "c;d;e", out, bundle=bundle, provider="cpu", overwrite=True)
            outcomes.add("new")
            assert _set(out) == {"legend": ["c", "d", "e"], "summary": ["c", "d", "e"], "qml_ok": True}
        except (OSError, KeyboardInterrupt):
            outcomes.add("old")
            assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # exactly the old set, byte for byte
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        assert (out / "notes.txt").read_text() == "mine"
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
        if "new" in outcomes:
            break
        assert sorted(tmp_path.iterdir()) == [out, tmp_path / "rgb.tif"]
    assert outcomes == {"old", "new"}  # every failing step was tried, then the publish went through


def _classify_args(src: Path, out: Path, tiny_bundle: Path, classes: str, *extra: str) -> list[str]:
    return ["classify", str(src), "--classes", classes, "--out", str(out), "--bundle", str(tiny_bundle),
            "--provider", "cpu", "--overlap", "0.5", *extra]


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_runs_into_the_same_out_never_mix_and_the_second_is_refused(tiny_bundle: Path, tmp_path: Path,
                                                                        overwrite: bool) -> None:
    src = _rgb(tmp_path / "rgb.tif", size=768)
    out = tmp_path / "out"
    extra = ("--overwrite",) if overwrite else ()
    procs = [_rsclip(*_classify_args(src, out, tiny_bundle, classes, *extra)) for classes in ("a;b", "c;d;e")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    rcs = sorted(rc for rc, _ in results)
    assert rcs[0] == 0 and set(rcs) <= {0, 2}, results
    for rc, err in results:
        if rc == 2:
            line = _one_line_error(err, "classify")
            assert "is writing" in line or "already holds" in line, line
    if not overwrite:
        assert rcs == [0, 2]  # never both: the second would silently replace the first
    s = _set(out)
    assert s["legend"] == s["summary"] and s["qml_ok"], s
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, ("a.txt",)) as first:
        (first.path / "a.txt").write_text("1")
        with pytest.raises(OutputError, match="is writing") as err, OutputFolder(out, ("a.txt",), overwrite=True):
            pass
        assert f"pid {os.getpid()}" in str(err.value) and "--out" in err.value.render({"out": "--out"})
        first.publish()
    assert (out / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # lock file and staging gone


def test_interrupt_message_says_what_was_written(tmp_path: Path, capsys, monkeypatch) -> None:
    """An interrupt after the outputs were published must not claim that nothing was written."""
    from rs_clip_plugin.engine.commands import info

    def publish_then_interrupt(args):
        with OutputFolder(tmp_path / "out", ("a.txt",)) as out:
            (out.path / "a.txt").write_text("done")
            out.publish()
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", publish_then_interrupt)
    assert main(["info"]) == 130
    err = capsys.readouterr().err
    assert "nothing was written" not in err and str(tmp_path / "out") in err


# --- 3. I/O failures: exit 2, one line that names the file and the fix ----------------------------------
def test_truncated_cog_is_a_read_error_naming_the_file(tiny_bundle: Path, tmp_path: Path, capfd) -> None:
    src = _rgb(tmp_path / "cut.tif", size=512)
    os.truncate(src, src.stat().st_size // 2)
    out = tmp_path / "out"
    rc = main(_classify_args(src, out, tiny_bundle, "a;b"))
    line = _one_line_error(capfd.readouterr().err, "classify")
    assert rc == 2 and str(src) in line and "truncated" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif"]


def test_search_out_that_is_a_file(tiny_bundle: Path, tmp_path: Path, capfd) -> None:
    src = _rgb(tmp_path / "rgb.tif")
    target = tmp_path / "hits.txt"
    target.write_text("not a folder")
    rc = main(["search", str(src), "--query", "river", "--out", str(target), "--bundle", str(tiny_bundle),
               "--provider", "cpu"])
    line = _one_line_error(capfd.readouterr().err, "search")
    assert rc == 2 and "is a file, not a folder" in line and "--out" in line
    assert target.read_text() == "not a folder"


def test_read_only_out_and_read_only_cache(tiny_bundle: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    src = _rgb(tmp_path / "rgb.tif")
    with _tmpfs(tmp_path / "ro", options="ro") as ro:
        rc = main(_classify_args(src, ro / "out", tiny_bundle, "a;b"))
        line = _one_line_error(capfd.readouterr().err, "classify")
        assert rc == 2 and "Read-only file system" in line and "--out" in line
        rc = main(_classify_args(src, ro, tiny_bundle, "a;b"))  # the read-only mount point itself
        line = _one_line_error(capfd.readouterr().err, "classify")
        assert rc == 2 and "Read-only file system" in line
        monkeypatch.setenv("RSCLIP_CACHE", str(ro / "cache"))
        rc = main(["index", str(src), "--bundle", str(tiny_bundle), "--provider", "cpu"])
        line = _one_line_error(capfd.readouterr().err, "index")
        assert rc == 2 and "RSCLIP_CACHE" in line and str(ro) in line


@pytest.mark.parametrize("command", ["classify", "search"])
def test_disk_full(tiny_bundle: Path, tmp_path: Path, command: str) -> None:
    """A real `rsclip` process: GDAL prints its own complaint on stderr before rasterio raises, and only the
    CLI's one line may reach the user."""
    src = _rgb(tmp_path / "rgb.tif", size=512)
    with _tmpfs(tmp_path / "small", size="512k") as small:
        # Leave a few blocks: enough to start, not enough for the outputs.
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        (small / "filler").write_bytes(b"\0" * (free - 16 * 1024))
        out = small / "out"
        if command == "classify":
            proc = _rsclip(*_classify_args(src, out, tiny_bundle, "a;b"))
        else:
            proc = _rsclip("search", str(src), "--query", "river", "--out", str(out), "--bundle", str(tiny_bundle),
                           "--provider", "cpu", "--heatmap")
        rc = proc.wait(timeout=300)
        line = _one_line_error(proc.stderr.read(), command)
        assert rc == 2 and "free some space" in line and str(out) in line
        assert sorted(p.name for p in small.iterdir()) == ["filler"]  # no staging, no lock, no half folder


# --- 8. SIGKILL leftovers are cleaned by the next run ---------------------------------------------------
def _kill_when(proc: subprocess.Popen, appeared, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not appeared():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_leftovers_are_cleaned_on_the_next_run(tiny_bundle: Path, tmp_path: Path) -> None:
    src = _rgb(tmp_path / "rgb.tif", size=1024)
    for out in (tmp_path / "new", tmp_path / "existing"):  # staging beside a new folder / inside an existing one
        if out.name == "existing":
            out.mkdir()
            (out / "keep.txt").write_text("mine")
        proc = _rsclip(*_classify_args(src, out, tiny_bundle, "a;b"))
        where = tmp_path if out.name == "new" else out
        _kill_when(proc, lambda w=where: any(".rsclip-staging-" in p.name for p in w.iterdir()))
        assert [p for p in where.iterdir() if ".rsclip-staging-" in p.name]  # left behind by the killed run
        proc = _rsclip(*_classify_args(src, out, tiny_bundle, "a;b"))
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        assert not [p.name for p in where.iterdir() if p.name.startswith(".")]
        assert (out / "labels.tif").is_file()
    assert (tmp_path / "existing" / "keep.txt").read_text() == "mine"


def test_sigkill_during_indexing_leaves_a_staging_folder_the_next_build_removes(tiny_bundle: Path,
                                                                                tmp_path: Path) -> None:
    src = _rgb(tmp_path / "rgb.tif", size=1024)
    cache = tmp_path / "cache"
    env = {"RSCLIP_CACHE": str(cache)}
    args = ("index", str(src), "--bundle", str(tiny_bundle), "--provider", "cpu", "--overlap", "0.5")
    proc = _rsclip(*args, env=env)
    root = cache / "index"
    _kill_when(proc, lambda: root.is_dir() and any(".rsclip-staging-" in p.name for p in root.iterdir()))
    proc = _rsclip(*args, env=env)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_swap_cut_short_by_a_dead_process_is_rolled_back_or_forward(tmp_path: Path) -> None:
    pid = _dead_pid()
    out = tmp_path / "out"
    # Killed while moving in: the old a.txt aside, the new a.txt in place, the new b.txt still staged.
    (out / f".rsclip-staging-{pid}-ab").mkdir(parents=True)
    aside = out / f".rsclip-old-{pid}-ab"
    aside.mkdir()
    (aside / JOURNAL).write_text(json.dumps({"new": ["a.txt", "b.txt"], "staging": f".rsclip-staging-{pid}-ab"}))
    (aside / "a.txt").write_text("old a")
    (aside / "b.txt").write_text("old b")
    (out / "a.txt").write_text("new a")
    (out / f".rsclip-staging-{pid}-ab" / "b.txt").write_text("new b")
    (out / "user.txt").write_text("mine")
    clean_stale(out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "old a", "b.txt": "old b", "user.txt": "mine"}
    # Killed after everything moved in, before the old set was removed: the new set stays.
    aside.mkdir()
    (aside / JOURNAL).write_text(json.dumps({"new": ["a.txt"], "staging": f".rsclip-staging-{pid}-cd"}))
    (aside / "a.txt").write_text("older a")
    clean_stale(out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "old a", "b.txt": "old b", "user.txt": "mine"}
    # A live owner's folders are never touched.
    live = out / f".rsclip-staging-{os.getpid()}-ef"
    live.mkdir()
    clean_stale(out)
    assert live.is_dir()


def test_existing_folder_rules(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "user.tif").write_text("a user's file")
    with OutputFolder(out, ("labels.tif", "heatmap_*.tif")) as o:
        (o.path / "labels.tif").write_text("1")
        (o.path / "heatmap_1_x.tif").write_text("h")
        o.publish()
    with pytest.raises(OutputExistsError, match=r"heatmap_1_x\.tif, labels\.tif"), \
            OutputFolder(out, ("labels.tif", "heatmap_*.tif")):
        pass
    with OutputFolder(out, ("labels.tif", "heatmap_*.tif"), overwrite=True) as o:
        (o.path / "labels.tif").write_text("2")
        o.publish()
    # Overwrite replaced this job's kind of files (a stale heat map included), and only those.
    assert {p.name: p.read_text() for p in out.iterdir()} == {"labels.tif": "2", "user.tif": "a user's file"}


# --- 9. rasters without data ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_all_nodata_raster_says_so(tiny_bundle: Path, tmp_path: Path, capfd, dtype: str) -> None:
    fill = 0 if dtype == "uint8" else float("nan")
    src = _rgb(tmp_path / "empty.tif", fill=fill, dtype=dtype)
    out = tmp_path / "out"
    extra = () if dtype == "uint8" else ("--sensor", "rgb")  # unnamed float bands: say what they are
    rc = main(_classify_args(src, out, tiny_bundle, "a;b", *extra))
    printed = capfd.readouterr().out
    assert rc == 0
    warnings = json.loads((out / "summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "holds no data" in warnings[0] and str(src) in warnings[0]
    assert f"warning: {warnings[0]}" in printed


# --- options objects ------------------------------------------------------------------------------------
def test_options_objects_fold_the_earlier_keywords_and_check_values() -> None:
    o = split_options(None, TilingOptions(overlap=0.25), None, {"provider": "cpu", "workers": 0, "sensor": "rgb"})
    assert o.tiling.overlap == 0.25 and o.run == RunOptions(provider="cpu", threads=0) and o.raster.sensor == "rgb"
    with pytest.raises(TypeError, match="bogus"):
        split_options(loose={"bogus": 1})
    with pytest.raises(InputError, match="precision") as err:
        RunOptions(precision="bf16")
    assert "--precision" in err.value.render({"precision": "--precision"})
    with pytest.raises(InputError, match="overlap"):
        TilingOptions(overlap=1.0)


def test_output_files_go_to_their_own_paths_as_one_unit_also_across_file_systems(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """QGIS Processing's destinations: each file at a path of its own, possibly on another file system."""
    from rs_clip_plugin.engine.atomic import OutputFiles

    with _tmpfs(tmp_path / "mnt") as mnt:
        targets = {"labels.tif": tmp_path / "map.tif", "summary.json": mnt / "sub" / "map.json"}

        def run(text: str, overwrite: bool = True) -> None:
            with OutputFiles(targets, overwrite=overwrite) as out:
                for name in targets:
                    (out.path / name).write_text(text)
                (out.path / "extra.txt").write_text("not kept")
                out.publish()

        run("1")
        assert {p.read_text() for p in targets.values()} == {"1"}
        with pytest.raises(OutputExistsError, match=r"map\.tif"):
            run("2", overwrite=False)
        real_replace = os.replace
        calls = {"n": 0}

        def failing(a, b):
            calls["n"] += 1
            if calls["n"] == 4:  # after the first file is in place: the set must go back to the old one
                raise OSError(5, "Input/output error")
            return real_replace(a, b)

        monkeypatch.setattr(os, "replace", failing)
        with pytest.raises(OutputError):
            run("3")
        monkeypatch.setattr(os, "replace", real_replace)
        assert {p.read_text() for p in targets.values()} == {"1"}
        run("4")
        assert {p.read_text() for p in targets.values()} == {"4"}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "mnt"]
        assert sorted(p.name for p in (mnt / "sub").iterdir()) == ["map.json"]
