"""Where the receiver keeps redacted JPEGs and clips: one interface, a local directory and S3-compatible
object storage, and the factory that picks one from ``[media]``."""
