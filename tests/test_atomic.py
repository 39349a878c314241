"""Write-then-rename helpers (engine/atomic.py) and the shared `rsclip` argument parsers (commands/common.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from rs_clip_plugin.engine.atomic import atomic_write_text, replace_dir
from rs_clip_plugin.engine.commands.common import (
    add_raster_args,
    job_options,
    parse_bands,
    parse_extent,
    parse_point,
)


def _dir(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_replace_dir_moves_into_place_and_replaces_the_old_content(tmp_path: Path) -> None:
    final = tmp_path / "out"
    replace_dir(_dir(tmp_path / ".tmp1", a="1"), final)
    assert (final / "a").read_text() == "1"
    replace_dir(_dir(tmp_path / ".tmp2", b="2"), final)
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old directory left behind


def test_replace_dir_puts_the_old_content_back_when_the_rename_fails(tmp_path: Path) -> None:
    final = _dir(tmp_path / "out", keep="mine")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "never-written", final)
    assert (final / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("theirs_complete", [True, False])
def test_replace_dir_when_another_process_renames_first(tmp_path: Path, monkeypatch, theirs_complete: bool) -> None:
    final = tmp_path / "out"
    tmp = _dir(tmp_path / ".tmp", a="ours")
    real_replace = os.replace

    def racing_replace(src, dst):
        if Path(src) == tmp:  # the other process's result lands just before our rename
            _dir(final, done="theirs")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)
    if theirs_complete:
        replace_dir(tmp, final, complete=lambda d: (d / "done").is_file())
        assert not tmp.exists()
    else:
        with pytest.raises(OSError):  # not a finished result: the failure is not hidden
            replace_dir(tmp, final, complete=lambda d: False)
    assert sorted(p.name for p in final.iterdir()) == ["done"]


def test_atomic_write_text_leaves_no_temp_file(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "f.json", "{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "f.json", "x")


def test_shared_parsers() -> None:
    assert parse_extent("1, 2,3,4") == [1.0, 2.0, 3.0, 4.0]
    assert parse_point("5,6") == (5.0, 6.0)
    assert parse_bands("B04, B03,,B02") == ["B04", "B03", "B02"]
    for bad in ("1,2,3", "a,b,c,d"):
        with pytest.raises(argparse.ArgumentTypeError, match="xmin,ymin,xmax,ymax"):
            parse_extent(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="x,y"):
        parse_point("1,2,3")


def test_job_options_hold_only_the_options_the_command_defines() -> None:
    from rs_clip_plugin.engine.options import RasterOptions, RunOptions, TilingOptions

    p = argparse.ArgumentParser()
    add_raster_args(p, modality=False, extent=False)
    args = p.parse_args(["--sensor", "s2-l2a", "--bands", "B04,B03,B02", "--overlap", "0.5", "--s2-offset", "1000"])
    opts = job_options(args)
    assert opts.raster == RasterOptions(sensor="s2-l2a", bands=("B04", "B03", "B02"), s2_offset=1000.0)
    assert opts.tiling == TilingOptions(overlap=0.5) and opts.run == RunOptions()
