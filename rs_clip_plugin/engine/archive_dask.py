"""Archive adds on Dask distributed: one task per scene, the same ``run_task`` as a local add.

``address`` is ``local:N`` (a LocalCluster of N single-threaded worker processes on 127.0.0.1, started
and stopped here) or a scheduler address (``tcp://host:8786``) of a running cluster. Each task embeds one
scene and writes its shard straight into the archive folder, which every worker must therefore reach at
the same path (a shared file system); the client only merges the shards into the index afterwards.
A worker process opens the bundle once (``archive._CACHE`` lives in the worker's process and survives
between tasks). Tasks that raise (a worker crash, a lost node) are retried elsewhere (``retries``);
a scene the user must fix (unreadable, unmappable) is returned as a failure and not retried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

from .archive import ArchiveError, SceneTask, run_task
from .progress import Progress


def _client(address: str):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ArchiveError("--dask needs dask.distributed: pip install 'rs-clip[archive]'") from exc
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ArchiveError(f"{{dask}} {address!r}: give local:N with N >= 1 worker processes, or a scheduler address")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=40)
        return Client(cluster), cluster
    try:
        return Client(address, timeout="20s"), None
    except OSError as exc:
        raise ArchiveError(f"{{dask}} {address}: no Dask scheduler answers there ({exc}); start one "
                           "(dask scheduler) or use local:N") from exc


def run_tasks(address: str, tasks: Sequence[SceneTask], root: str, config: dict, provider: str,
              progress: Optional[Progress] = None, retries: int = 2, func: Callable = run_task) -> list[tuple[bool, str]]:
    """``func`` (``run_task``) for every task on the cluster; results in the order of ``tasks``."""
    from dask.distributed import as_completed

    progress = progress or Progress()
    if not tasks:
        return []
    client, cluster = _client(address)
    try:
        futures = [client.submit(func, t, root, config, provider, key=f"rsclip-scene-{t.key}",
                                 retries=retries, pure=False) for t in tasks]
        where = {f.key: i for i, f in enumerate(futures)}
        results: list[tuple[bool, str]] = [(False, "not run")] * len(tasks)
        for done, fut in enumerate(as_completed(futures), start=1):
            progress.check()
            i = where[fut.key]
            try:
                results[i] = fut.result()
            except Exception as exc:  # retries exhausted: report the scene, go on with the others
                results[i] = (False, f"failed on the cluster after {retries} retries: {exc}")
            progress.update(done / len(tasks), f"{done}/{len(tasks)} scenes on {len(client.scheduler_info()['workers'])} workers")
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

