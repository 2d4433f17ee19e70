"""root_orchestrator package."""
