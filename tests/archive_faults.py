"""A scene task that kills its Dask worker process the first time it runs (for the retry test)."""

from __future__ import annotations

import os
from pathlib import Path

from rs_clip_plugin.engine.archive import SceneTask, run_task


def crash_once(task: SceneTask, root: str, config: dict, provider: str) -> tuple[bool, str]:
    marker = Path(root) / f".crashed-{task.key}"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(17)  # the worker process dies mid-task, as on a lost node
    return run_task(task, root, config, provider)
