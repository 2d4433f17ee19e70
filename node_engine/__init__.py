"""node_engine package: the agent that runs on each edge device (see docs/node-engine.md)."""

__version__ = "0.1.0"
