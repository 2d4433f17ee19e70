"""cluster_orchestrator package."""
