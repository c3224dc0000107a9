"""Vision on the pole: per-camera pipeline, motion gate, tracking, counting, zones, camera health,
plates, privacy and snapshots."""
