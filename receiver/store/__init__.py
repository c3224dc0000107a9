"""The receiver's storage: one interface, a SQLite and a PostgreSQL backend, and the factory that
picks one from a database URL."""
