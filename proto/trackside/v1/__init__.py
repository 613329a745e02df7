"""trackside.v1 protocol package (generated modules)."""
