"""Processing provider ``rsclip``: index, classify, search and heatmap algorithms over the engine."""
