"""The QGIS plugin object: menu, toolbar, search dock, Processing provider, dependency check."""

from __future__ import annotations

import contextlib
from typing import Optional

from qgis.core import Qgis, QgsApplication, QgsSettings
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QPushButton

from . import deps
from .presets import icon_path

MENU = "&RS-CLIP"


class RSClipPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider = None
        self.actions: list[QAction] = []
        self.toolbar = None
        self.dock = None
        self.classify_dialog = None
        self.models_dialog = None
        self.deps_dialog = None
        self.missing: list = []
        self.missing_bar = None  # the message bar item offering to install missing packages

    # -- Processing (also the only part qgis_process loads) --------------------------------------------
    def initProcessing(self) -> None:
        from .processing.provider import RSClipProvider

        if self.provider is None:
            self.provider = RSClipProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        self.toolbar = self.iface.addToolBar("RS-CLIP")
        self.toolbar.setObjectName("RSClipToolbar")
        for text, slot, on_toolbar, icon, name in (
            ("Classify layer by prompt…", self.show_classify, True, "icon_classify", "rsclip_classify"),
            ("Map search panel", self.toggle_search, True, "icon_search", "rsclip_search"),
            ("Model manager…", self.show_models, False, "icon", "rsclip_models"),
            ("Check Python packages…", self.show_deps, False, "icon", "rsclip_deps"),
        ):
            action = QAction(QIcon(icon_path(icon)), text, self.iface.mainWindow())
            action.setObjectName(name)
            # triggered(bool) must not reach slots with optional parameters: call them bare.
            action.triggered.connect(lambda _checked=False, slot=slot: slot())
            self.iface.addPluginToRasterMenu(MENU, action)
            if on_toolbar:
                self.toolbar.addAction(action)
            self.actions.append(action)
        self.missing = deps.missing_packages()
        if self.missing:
            self._offer_install()

    def unload(self) -> None:
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
        self.actions = []
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.dock is not None:
            self.dock.cleanup()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        for dlg in (self.classify_dialog, self.models_dialog, self.deps_dialog):
            if dlg is not None:
                dlg.close()
                dlg.deleteLater()
        self.classify_dialog = self.models_dialog = self.deps_dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # -- dependency check ------------------------------------------------------------------------------
    def _offer_install(self) -> None:
        text = deps.describe(self.missing) + ". RS-CLIP can install them into your QGIS profile."
        bar = self.iface.messageBar()
        widget = bar.createMessage("RS-CLIP", text)
        button = QPushButton("Install…", widget)
        button.setObjectName("rsclip_deps_offer")
        button.clicked.connect(lambda _checked=False: self.show_deps())
        widget.layout().addWidget(button)
        self.missing_bar = bar.pushWidget(widget, Qgis.Warning)
        if QgsSettings().value("rsclip/ask_install", True, type=bool):
            QTimer.singleShot(0, self.show_deps)

    def _ready(self) -> bool:
        self.missing = deps.missing_packages()
        if self.missing:
            self.show_deps()
            return False
        return True

    def _clear_missing_bar(self) -> None:
        """Once installed, the 'packages missing' warning has said its piece."""
        self.missing = deps.missing_packages()
        if self.missing_bar is not None and not self.missing:
            with contextlib.suppress(RuntimeError):  # the user may have closed it already
                self.iface.messageBar().popWidget(self.missing_bar)
            self.missing_bar = None

    # -- windows ---------------------------------------------------------------------------------------
    def show_deps(self) -> None:
        from .gui.deps_dialog import DependencyDialog

        if self.deps_dialog is None:
            self.deps_dialog = DependencyDialog(self.iface)
            self.deps_dialog.installed.connect(self._clear_missing_bar)
        self.deps_dialog.refresh()
        self.deps_dialog.show()
        self.deps_dialog.raise_()

    def show_classify(self) -> Optional[object]:
        if not self._ready():
            return None
        from .gui.classify_dialog import ClassifyDialog

        if self.classify_dialog is None:
            self.classify_dialog = ClassifyDialog(self.iface)
        else:
            self.classify_dialog.refresh_bundles()
        self.classify_dialog.show()
        self.classify_dialog.raise_()
        return self.classify_dialog

    def toggle_search(self) -> Optional[object]:
        if not self._ready():
            return None
        from .gui.search_dock import SearchDock

        if self.dock is None:
            self.dock = SearchDock(self.iface, parent=self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            return self.dock
        self.dock.setVisible(not self.dock.isVisible())
        return self.dock

    def show_models(self) -> None:
        if not self._ready():
            return
        from .gui.model_manager import ModelManagerDialog

        if self.models_dialog is None:
            self.models_dialog = ModelManagerDialog(self.iface)
        self.models_dialog.refresh()
        self.models_dialog.show()
        self.models_dialog.raise_()
