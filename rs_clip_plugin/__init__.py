"""RS-CLIP QGIS plugin package (the QGIS-free engine lives in ``rs_clip_plugin.engine``)."""
