"""The bundle chooser shared by the classify dialog and the search dock."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.PyQt.QtWidgets import QComboBox

from ..installed_bundles import ModelStore

NONE_INSTALLED = "(none installed: add one in the model manager)"


def fill_bundle_combo(combo: QComboBox, store: ModelStore, show_modalities: bool = False) -> None:
    """Installed bundles, the default one selected; a hint entry (empty data) when there are none."""
    combo.clear()
    for b in store.installed():
        label = f"{b.name}{' (default)' if b.is_default else ''}"
        if show_modalities:
            label += f" – {', '.join(b.modalities)}"
        combo.addItem(label, str(b.path))
        if b.is_default:
            combo.setCurrentIndex(combo.count() - 1)
    if combo.count() == 0:
        combo.addItem(NONE_INSTALLED, "")


def select_bundle(combo: QComboBox, path: Path) -> None:
    """Select a bundle folder or .zip, adding it to the list when it is not installed."""
    i = combo.findData(str(path))
    if i < 0:
        combo.addItem(Path(path).name, str(path))
        i = combo.count() - 1
    combo.setCurrentIndex(i)


def chosen_bundle_is_dense(combo: QComboBox) -> Optional[bool]:
    """Whether any encoder of the bundle chosen in ``combo`` has dense outputs (read from its manifest only);
    None when that is not known here (no bundle folder chosen, a .zip, or a broken bundle: the run says why)."""
    from ..engine.bundle import BundleError, read_manifest

    path = combo.currentData()
    if not path or not Path(path).is_dir():
        return None
    try:
        return any(e.dense for e in read_manifest(Path(path)).encoders)
    except BundleError:
        return None
