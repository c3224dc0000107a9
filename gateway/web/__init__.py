"""The pole's local HTTP server: ingest API, technicians' status page and login, Prometheus metrics."""
