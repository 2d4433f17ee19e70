"""Task runtimes: docker (Docker SDK) and native (process groups)."""
