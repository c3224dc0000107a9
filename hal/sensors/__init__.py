"""Serial sensor drivers: incremental byte-stream parsers shared by the daemon and the decoder."""
