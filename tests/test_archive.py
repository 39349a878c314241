"""Archive search end to end: STAC items of COGs served over real HTTP, GeoParquet shards, FAISS, Dask."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rs_clip_plugin.engine import ann
from rs_clip_plugin.engine.archive import Archive, create_archive, parse_datetime_range, write_hits
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import OutputExistsError
from rs_clip_plugin.engine.search import text_query_vector
from tests.http_support import Served, make_cogs, serve, stac_item

RGB = ["B02", "B03", "B04"]
SCENES = {"A": ((0, 0, 256, 256), "2020-02-23T03:27:39Z"), "B": ((400, 400, 256, 256), "2021-03-01T03:30:00Z"),
          "C": ((780, 600, 256, 256), "2022-06-15T03:30:00Z")}


@pytest.fixture(scope="module")
def served(major_tom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    """Three scenes as per-band COGs behind a range-serving HTTP server, and an ItemCollection URL."""
    root = tmp_path_factory.mktemp("archive-cogs")
    for name, (win, _) in SCENES.items():
        make_cogs(major_tom_dir, root, RGB, win, name)
    with serve(root) as srv:
        feats = [stac_item(f"S2_{n}", when, {b: srv.href(root / n / f"{b}.tif") for b in RGB}, bounds_from=root / n / "B04.tif")
                 for n, (_, when) in SCENES.items()]
        (root / "collection.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        for f in feats:  # each item alone too, as a local JSON file
            (root / f"{f['id']}.json").write_text(json.dumps(f))
        yield srv, srv.href(root / "collection.json")


def _shard_vectors(arc: Archive) -> dict[str, np.ndarray]:
    out = {}
    for p in arc.shards():
        t = pq.read_table(p)
        out[p.name] = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(), np.float32)
    return out


def test_add_search_filters_and_info(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path) -> None:
    _, collection = served
    arc = create_archive(tmp_path / "arc", tiny_bundle)
    with pytest.raises(OutputExistsError):
        create_archive(tmp_path / "arc", tiny_bundle)
    rep = arc.add([collection], provider="cpu")
    assert sorted(rep.added) == ["S2_A", "S2_B", "S2_C"] and not rep.failed and rep.n_vectors > 0
    assert len(list((tmp_path / "arc/items").glob("*.json"))) == 3  # items kept, hrefs absolute
    # The shard is GeoParquet: WKB geometry column with GeoParquet metadata; per-scene provenance.
    schema = pq.read_schema(arc.shards()[0])
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert json.loads(schema.metadata[b"rsclip"])["crs_wkt"]
    # Adding again is a no-op.
    mtimes = {p.name: p.stat().st_mtime_ns for p in arc.shards()}
    again = arc.add([collection], provider="cpu")
    assert not again.added and sorted(again.skipped) == ["S2_A", "S2_B", "S2_C"]
    assert {p.name: p.stat().st_mtime_ns for p in arc.shards()} == mtimes and again.n_vectors == rep.n_vectors

    q = text_query_vector(tiny_bundle, "a river")
    hits = arc.search(q, top_k=6, nms_iou=0.0)
    assert len(hits) == 6 and [h.rank for h in hits] == list(range(1, 7))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert len({h.scene for h in hits}) >= 2 and all(h.datetime for h in hits)
    assert all(h.source.startswith("/vsi") or h.source.endswith(".json") for h in hits)
    # Scores are the exact cosines of the stored vectors.
    vec = np.load(tmp_path / "arc/index/vectors.npy")
    assert np.isclose(hits[0].score, float(np.max(vec @ q)), atol=1e-5)
    # Filters: a datetime range selects one scene, a lon/lat box inside scene B selects B.
    assert {h.scene for h in arc.search(q, top_k=5, datetime_range="2021-01-01/2021-12-31")} == {"S2_B"}
    b = next(h for h in arc.search(q, top_k=50, nms_iou=1.0) if h.scene == "S2_B").lonlat
    inner = [(b[0] + b[2]) / 2 - 1e-4, (b[1] + b[3]) / 2 - 1e-4, (b[0] + b[2]) / 2 + 1e-4, (b[1] + b[3]) / 2 + 1e-4]
    assert {h.scene for h in arc.search(q, top_k=5, bbox=inner)} == {"S2_B"}
    assert arc.search(q, top_k=5, bbox=[0, 0, 1, 1]) == []
    # hits.gpkg with the columns.
    gpkg = write_hits(hits, tmp_path / "out")
    with sqlite3.connect(gpkg) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(hits)")]
        rows = con.execute("SELECT rank, scene, datetime FROM hits ORDER BY rank").fetchall()
    assert {"rank", "score", "scene", "datetime", "source"} <= set(cols)
    assert [r[1] for r in rows] == [h.scene for h in hits] and all(r[2] for r in rows)
    info = Archive.open(tmp_path / "arc").info()
    assert info["n_scenes"] == 3 and info["n_vectors"] == rep.n_vectors and info["index"] == "flat"
    assert info["exact"] and info["recall_queries"] == 0  # small archive: exact search, nothing to measure


def test_failed_scene_is_skipped_and_an_interrupted_add_resumes(tiny_bundle: Path, served: tuple[Served, str],
                                                                 tmp_path: Path) -> None:
    srv, collection = served
    arc = create_archive(tmp_path / "arc", tiny_bundle)
    bad = f"{srv.url}/missing/B04.tif"
    rep = arc.add([collection, bad], provider="cpu")
    assert len(rep.added) == 3 and len(rep.failed) == 1
    assert rep.failed[0][1].startswith(bad)  # the URL intact, named in the error
    # An add interrupted after two scenes: one shard missing (and a stray temp file from the crash).
    victim = arc.shards()[1]
    kept = {p.name: p.stat().st_mtime_ns for p in arc.shards() if p != victim}
    victim.unlink()
    (arc.shard_dir / f".{victim.name}.x.tmp").write_bytes(b"half")
    rep2 = arc.add([collection], provider="cpu")
    assert len(rep2.added) == 1 and len(rep2.skipped) == 2
    assert {p.name: p.stat().st_mtime_ns for p in arc.shards() if p.name in kept} == kept
    assert rep2.n_vectors == rep.n_vectors


def test_dask_local_cluster_builds_the_same_archive(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path) -> None:
    _, collection = served
    local = create_archive(tmp_path / "local", tiny_bundle)
    local.add([collection], provider="cpu")
    dist = create_archive(tmp_path / "dask", tiny_bundle)
    rep = dist.add([collection], provider="cpu", dask="local:2")
    assert sorted(rep.added) == ["S2_A", "S2_B", "S2_C"] and not rep.failed
    a, b = _shard_vectors(local), _shard_vectors(dist)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(np.load(tmp_path / "local/index/vectors.npy"), np.load(tmp_path / "dask/index/vectors.npy"))
    q = text_query_vector(tiny_bundle, "a river")
    assert [(h.scene, h.tile, h.score) for h in local.search(q, top_k=5)] == [(h.scene, h.tile, h.score) for h in dist.search(q, top_k=5)]


def test_ann_kinds_recall_and_exact_rerank() -> None:
    v = ann.clustered_vectors(3000, 32, clusters=100)
    for kind in ("hnsw", "ivfpq"):
        index = ann.build(v, kind)
        assert ann.kind_of(index) == kind
        r = ann.measure_recall(index, v)
        assert r.recall_at_10 >= 0.9, (kind, r)
        rows, scores = ann.search(index, v, v[5], 10)
        assert rows[0] == 5 and np.isclose(scores[0], 1.0, atol=1e-5)  # re-ranked: exact scores
    assert ann.choose_kind(10) == "flat" and ann.choose_kind(ann.FLAT_MAX) == "hnsw" and ann.choose_kind(ann.IVFPQ_MIN) == "ivfpq"
    assert parse_datetime_range("2021-03-01")[1] - parse_datetime_range("2021-03-01")[0] == 86399


def test_archive_index_is_extended_when_scenes_are_added(tiny_bundle: Path, served: tuple[Served, str],
                                                         tmp_path: Path, monkeypatch) -> None:
    from rs_clip_plugin.engine import archive as archive_mod

    # Small row groups, so that the hits below come from several groups of each shard.
    monkeypatch.setattr(archive_mod, "SHARD_ROW_GROUP", 7)
    srv, _ = served
    arc = create_archive(tmp_path / "arc", tiny_bundle, index_kind="hnsw")
    first = arc.add([srv.root / "S2_A.json"], provider="cpu").index
    assert first["kind"] == "hnsw" and not first["extended"] and first["recall_at_10"] >= 0.9 and first["queries"] > 0
    more = arc.add([srv.root / "S2_B.json", srv.root / "S2_C.json"], provider="cpu").index
    assert more["extended"] and more["kind"] == "hnsw" and more["scenes"][0] == first["scenes"][0]
    assert more["n_vectors"] > first["n_vectors"] and more["recall_at_10"] >= 0.9
    # The first scene's rows were copied from the index, not read again: they equal a rebuild from the shards.
    assert more["reused_vectors"] == first["n_vectors"]
    extended = {n: np.load(arc.root / "index" / n) for n in ("vectors.npy", "rows.npy", "lonlat.npy", "time.npy")}
    shutil.rmtree(arc.root / "index")
    rebuilt = Archive.open(arc.root).sync_index(kind="flat")
    assert rebuilt["reused_vectors"] == 0 and rebuilt["kind"] == "flat"
    for n, arr in extended.items():
        np.testing.assert_array_equal(np.load(arc.root / "index" / n), arr, err_msg=n)
    assert not [p.name for p in arc.root.iterdir() if p.name.startswith(".")]  # no staging left beside the index
    rebuilt = Archive.open(arc.root).sync_index(kind="hnsw")
    assert Archive.open(arc.root).info()["index"] == "hnsw"
    q = text_query_vector(tiny_bundle, "a river")
    exact_best = float(np.max(np.load(arc.root / "index/vectors.npy") @ q))
    hits = Archive.open(arc.root).search(q, top_k=12)
    assert np.isclose(hits[0].score, exact_best, atol=1e-5)
    # Each hit is its shard's row, read from the row group that holds it.
    shards = {p.name: pq.read_table(p).to_pylist() for p in Archive.open(arc.root).shards()}
    assert all(pq.ParquetFile(arc.root / "shards" / name).num_row_groups > 1 for name in shards)
    by_key = {(r["scene"], r["tile"]): r for rows in shards.values() for r in rows}
    for h in hits:
        r = by_key[h.scene, h.tile]
        assert (h.datetime, h.source, h.lonlat) == (r["datetime"], r["source"], (r["xmin"], r["ymin"], r["xmax"], r["ymax"]))
        # The record is the row whose vector was ranked (the fields above come from the record itself, so only
        # the score ties it to the index's row): a wrong row-group offset fails here.
        assert np.isclose(float(np.dot(np.asarray(r["embedding"], np.float32), q)), h.score, atol=1e-5), h
    assert len({h.scene for h in hits}) > 1


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_index_is_rebuilt_from_the_shards(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path,
                                                    damage: str) -> None:
    """Adding a scene to an archive whose index lost (or has a cut) vectors.npy rebuilds the index from the shards,
    the truth, instead of failing on the old index's rows (which sync_index copies when they are sound)."""
    from plugin_support import s2_crop

    scenes = [s2_crop(major_tom_dir, tmp_path / f"S2A_MSIL2A_2021060{i}T034541_N0300_R104_T48PUV_c.tif",
                      col=300 + 200 * i, row=500) for i in (1, 2)]
    arc = create_archive(tmp_path / "arc", tiny_bundle)
    arc.add([str(scenes[0])], provider="cpu")
    vectors = arc.root / "index" / "vectors.npy"
    if damage == "missing":
        vectors.unlink()
    else:
        with open(vectors, "r+b") as f:
            f.truncate(vectors.stat().st_size // 2)
    meta = arc.add([str(scenes[1])], provider="cpu").index
    assert meta["n_vectors"] == 18 and meta["reused_vectors"] == 0
    got = {n: np.load(arc.root / "index" / n) for n in ("vectors.npy", "rows.npy", "lonlat.npy", "time.npy")}
    shutil.rmtree(arc.root / "index")
    Archive.open(arc.root).sync_index()
    for n, arr in got.items():
        np.testing.assert_array_equal(np.load(arc.root / "index" / n), arr, err_msg=n)


def test_cli_archive_commands(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path, capsys) -> None:
    _, collection = served
    d = str(tmp_path / "arc")
    assert main(["archive", "create", d, "--bundle", str(tiny_bundle)]) == 0
    assert main(["archive", "search", d, "--query", "a river"]) == 2  # no index yet: a clear error
    assert "archive add" in capsys.readouterr().err
    assert main(["archive", "add", d, collection, "--provider", "cpu", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["added"]) == 3
    assert main(["archive", "search", d, "--query", "a river", "--top-k", "4", "--datetime", "2020-01-01/2021-12-31",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["hits"]) == 4 and {h["scene"] for h in res["hits"]} <= {"S2_A", "S2_B"}
    assert (tmp_path / "out/hits.gpkg").is_file()
    assert main(["archive", "info", d, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_scenes"] == 3 and info["index"] == "flat" and info["exact"] and info["n_vectors"] > 0
    assert main(["archive", "info", str(tmp_path / "nothing")]) == 2
    assert "not an archive" in capsys.readouterr().err


def test_dask_worker_death_retries_the_scene_elsewhere(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path) -> None:
    from rs_clip_plugin.engine.archive_dask import run_tasks
    from tests.archive_faults import crash_once

    srv, _ = served
    arc = create_archive(tmp_path / "arc", tiny_bundle)
    tasks = arc.expand([srv.root / "S2_A.json", srv.root / "S2_B.json"])
    results = run_tasks("local:2", tasks, str(arc.root), arc.config, "cpu", retries=2, func=crash_once)
    assert [ok for ok, _ in results] == [True, True], results
    assert all((arc.root / f".crashed-{t.key}").is_file() for t in tasks)  # each first attempt really died
    ref = create_archive(tmp_path / "ref", tiny_bundle)
    ref.add([srv.root / "S2_A.json", srv.root / "S2_B.json"], provider="cpu")
    a, b = _shard_vectors(arc), _shard_vectors(ref)
    assert a and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_stac_api_search_adds_its_items(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path, capsys) -> None:
    """--stac-api through pystac-client against a minimal STAC API (landing page + POST /search) on 127.0.0.1."""
    srv, _ = served
    feats = json.loads((srv.root / "collection.json").read_text())["features"][:2]
    (srv.root / "search.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats, "links": []}))
    landing = {"type": "Catalog", "id": "test-api", "description": "local", "stac_version": "1.0.0",
               "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
               "links": [{"rel": "self", "href": f"{srv.url}/api.json"},
                         {"rel": "search", "href": f"{srv.url}/search", "type": "application/geo+json", "method": "POST"}]}
    (srv.root / "api.json").write_text(json.dumps(landing))
    d = str(tmp_path / "arc")
    assert main(["archive", "create", d, "--bundle", str(tiny_bundle)]) == 0
    assert main(["archive", "add", d, "--stac-api", f"{srv.url}/api.json", "--collections", "sentinel-2-l2a",
                 "--bbox", "103,17,104,18", "--datetime", "2020-01-01/2021-12-31", "--max-items", "5",
                 "--provider", "cpu", "--json"]) == 0
    out = capsys.readouterr().out
    assert sorted(json.loads(out[out.index("{"):])["added"]) == ["S2_A", "S2_B"]
    body = json.loads([r for m, p, r in srv.requests if m == "POST"][-1])
    assert body["collections"] == ["sentinel-2-l2a"] and body["bbox"] == [103.0, 17.0, 104.0, 18.0]
    assert body["datetime"].startswith("2020-01-01")


def test_each_dask_worker_opens_the_bundle_once(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    from rs_clip_plugin.engine.archive import bundle_opens, run_task

    _, collection = served
    arc = create_archive(tmp_path / "arc", tiny_bundle)
    tasks = arc.expand([collection])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        results = client.gather([client.submit(run_task, t, str(arc.root), arc.config, "cpu", pure=False) for t in tasks])
        assert all(ok for ok, _ in results)
        assert list(client.run(bundle_opens).values()) == [1]  # three scenes, one bundle opened in the worker


def test_image_and_point_queries_search_the_archive(tiny_bundle: Path, served: tuple[Served, str], data_dir: Path,
                                                    tmp_path: Path, capsys) -> None:
    srv, collection = served
    d = str(tmp_path / "arc")
    assert main(["archive", "create", d, "--bundle", str(tiny_bundle)]) == 0
    assert main(["archive", "add", d, collection, "--provider", "cpu"]) == 0
    capsys.readouterr()
    photo = next((data_dir / "eurosat_rgb_small").rglob("*.jpg"))
    assert main(["archive", "search", d, "--image-file", str(photo), "--top-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3
    # A point in scene B's own raster finds that very tile first (same encoder, same tile: cosine 1).
    b04 = srv.root / "B" / "B04.tif"
    import rasterio

    with rasterio.open(b04) as ds:
        x, y = ds.transform * (32, 32)  # the centre of the first 64 px tile
    assert main(["archive", "search", d, "--point", f"{x},{y}", "--query-raster", str(b04.parent), "--top-k", "1",
                 "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["hits"][0]
    assert best["scene"] == "S2_B" and best["window"][:2] == [0, 0] and best["score"] > 0.999


def test_front_end_helpers_search_and_show_a_hit(tiny_bundle: Path, served: tuple[Served, str], tmp_path: Path) -> None:
    """The two calls the search dock needs: search_archive (text in, dated hits out) and display_source."""
    import rasterio

    from rs_clip_plugin.engine.archive import display_source, search_archive

    _, collection = served
    create_archive(tmp_path / "arc", tiny_bundle).add([collection], provider="cpu")
    hits = search_archive(tmp_path / "arc", "a river -a town", top_k=4, datetime_range="2021-01-01/..", provider="cpu")
    assert len(hits) == 4 and {h.scene for h in hits} <= {"S2_B", "S2_C"} and all(h.datetime >= "2021" for h in hits)
    vrt = display_source(hits[0].source, tmp_path / "vrt")
    with rasterio.open(vrt) as ds:  # a true-colour VRT over the /vsicurl/ COGs, georeferenced like the scene
        assert ds.count == 3 and ds.crs is not None and float(ds.read(1).mean()) > 0
    assert display_source("/data/scene.tif", tmp_path) == "/data/scene.tif"


def test_a_rewritten_shard_is_read_again_not_copied_from_the_index(tiny_bundle: Path, major_tom_dir: Path,
                                                                    tmp_path: Path) -> None:
    """A scene re-embedded under the same shard name (its shard deleted, its file updated, added again) while
    another scene is added: the index holds the new shard's vectors, not the old index's rows of that scene
    (equal row counts made sync_index copy them), and an add with nothing new still notices the rewrite."""
    from plugin_support import s2_crop

    first = tmp_path / "S2A_MSIL2A_20210601T034541_N0300_R104_T48PUV_c.tif"
    second = tmp_path / "S2A_MSIL2A_20210602T034541_N0300_R104_T48PUV_c.tif"
    s2_crop(major_tom_dir, first, col=300, row=500)
    s2_crop(major_tom_dir, second, col=700, row=500)
    arc = create_archive(tmp_path / "arc", tiny_bundle)
    arc.add([str(first)], provider="cpu")
    (shard,) = arc.shards()
    before = _shard_vectors(arc)[shard.name]
    # The scene's file is reprocessed (other pixels, same grid): the user deletes its shard to re-embed it.
    s2_crop(major_tom_dir, first, col=500, row=900)
    shard.unlink()
    meta = arc.add([str(first), str(second)], provider="cpu").index
    vectors = _shard_vectors(arc)
    assert not np.allclose(vectors[shard.name], before)  # the re-embedded shard differs
    got = np.load(arc.root / "index" / "vectors.npy")
    for i, name in enumerate(meta["scenes"]):
        start = sum(meta["counts"][:i])
        np.testing.assert_array_equal(got[start : start + meta["counts"][i]].reshape(-1), vectors[name], err_msg=name)
    # Rewritten again with nothing else added: the index is rebuilt, not returned as it was.
    s2_crop(major_tom_dir, first, col=300, row=500)
    shard.unlink()
    arc.add([str(first)], provider="cpu")
    got = np.load(arc.root / "index" / "vectors.npy")
    meta = Archive.open(arc.root).index_meta()
    i = meta["scenes"].index(shard.name)
    start = sum(meta["counts"][:i])
    np.testing.assert_array_equal(got[start : start + meta["counts"][i]].reshape(-1), _shard_vectors(arc)[shard.name])
