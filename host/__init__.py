"""Host side: datasets, models, workers computing per-worker gradients, the parameter server."""
