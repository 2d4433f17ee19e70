"""node_engine package."""
