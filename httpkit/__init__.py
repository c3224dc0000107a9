"""HTTP plumbing that the pole's local server and the cloud receiver share and that belongs to
neither: JSON error bodies for every refusal."""
