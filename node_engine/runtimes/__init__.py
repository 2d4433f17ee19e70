"""Task runtimes: docker (Docker Engine API, `docker_api`) and native (process groups)."""
