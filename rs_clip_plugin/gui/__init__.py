"""Qt/QGIS widgets of the plugin: classify dialog, search dock, model manager, dependency dialog, tasks."""
