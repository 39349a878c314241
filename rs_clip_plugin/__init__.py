"""RS-CLIP QGIS plugin package (the QGIS-free engine lives in ``rs_clip_plugin.engine``).

Importing this package must not import qgis: the engine and the CLI use it without QGIS. QGIS calls
``classFactory`` and only then is the Qt/QGIS side imported.
"""


def classFactory(iface):
    """Entry point QGIS calls with its QgisInterface."""
    from .deps import activate_private_site

    # Packages installed by the dependency dialog live in the profile; they must be importable before
    # anything touches the engine.
    activate_private_site()
    from .plugin import RSClipPlugin

    return RSClipPlugin(iface)
