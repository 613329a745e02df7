"""The trackside sidecar daemon: listeners, run streams, the write-ahead log, merger, uploader."""
