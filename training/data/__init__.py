"""Datasets that validate their files and name what is missing, sharing band tables with the engine.

- ``readers``: per-band GeoTIFF folders and multi-band files -> float32 stacks on one grid;
- ``composites``: Sentinel-2 RGB composites (Paper A scaling), the 13-band layout with the L2A zero band,
  the encoder inputs (the engine's ``radiometry`` functions, so training normalises as the plugin does);
- ``transforms``: per-modality augmentations;
- ``eurosat``, ``bigearthnet`` (v1 folders), ``bigearthnet_v2`` (reBEN LMDB + parquet), ``sen12ms``, ``manifest``,
  ``samples``: the datasets;
- ``loaders``: lazy torch datasets over them and the DataLoader builder (workers, pinned memory, DDP sampler).
"""
