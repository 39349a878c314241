"""Where GUI runs write, how they say so, and how engine errors are worded for a dialog's fields.

Results go to a folder the user can find again: the one they chose last (QGIS remembers it), else a
``rsclip-results`` folder beside the saved project, else ``RS-CLIP results`` in their Documents folder.
Never a hidden cache folder.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Optional

from qgis.core import Qgis, QgsProject, QgsSettings
from qgis.PyQt.QtCore import QStandardPaths, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QPushButton

OUTPUT_KEY = "rsclip/output_folder"


def default_output_root() -> Path:
    home = QgsProject.instance().homePath()
    if home:
        return Path(home) / "rsclip-results"
    docs = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or str(Path.home())
    return Path(docs) / "RS-CLIP results"


def output_root() -> Path:
    """The folder the user chose last, else the default above."""
    chosen = QgsSettings().value(OUTPUT_KEY, "", type=str)
    return Path(chosen) if chosen else default_output_root()


def remember_output_root(path: str) -> None:
    if path.strip():
        QgsSettings().setValue(OUTPUT_KEY, path.strip())


def unique_result_dir(root: Path, base: str) -> Path:
    """A result folder name not used yet (two runs in the same second must not collide)."""
    base = re.sub(r"[^\w.-]+", "_", base).strip("_") or "result"
    candidate, n = root / base, 1
    # A run still being written has its hidden staging folder beside it (engine.atomic).
    while candidate.exists() or any(root.glob(f".{glob.escape(candidate.name)}.rsclip-*")):
        n += 1
        candidate = root / f"{base}-{n}"
    return candidate


def open_folder(folder: Path) -> None:
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


def push_result(iface, text: str, folder: Optional[Path], level=Qgis.Success, duration: int = 10) -> None:
    """A message bar entry saying what was written, with a button that opens the folder."""
    if iface is None:
        return
    bar = iface.messageBar()
    widget = bar.createMessage("RS-CLIP", text)
    if folder is not None:
        button = QPushButton("Open folder", widget)
        button.setObjectName("rsclip_open_folder")
        button.setToolTip(str(folder))
        button.clicked.connect(lambda _checked=False: open_folder(folder))
        widget.layout().addWidget(button)
    bar.pushWidget(widget, level, duration)


def field_message(exc: BaseException, fields: Mapping[str, str], paths: Iterable[tuple[str, str]] = ()) -> str:
    """An engine error in a dialog's words: parameters become the field labels the user sees
    ('Sensor', 'Band mapping'), and long file paths the layer names they know.

    ``paths`` maps (path, name) for the layers involved; engine messages name files by full path.
    """
    from ..engine.errors import RSClipError

    if isinstance(exc, RSClipError):
        text = exc.render({k: f"‘{v}’" for k, v in fields.items()})
    else:
        text = str(exc) or type(exc).__name__
    for path, name in sorted(paths, key=lambda p: -len(p[0])):
        if path:
            text = text.replace(path, f"‘{name}’")
    return text
