# Two commands matter: `make demo` runs the system, `make test` runs the tests.
# Both install what they need first (Debian packages, Docker engine, .venv).
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup test lint demo bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup:  ## install Debian packages, start dockerd, create .venv
	bash scripts/setup.sh

test: setup  ## run the whole test suite (unit, integration, e2e) with real brokers and Docker
	bash scripts/build_test_image.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy schemas placement store root_orchestrator cluster_orchestrator node_engine edgectl

demo: setup  ## start a local system (root, 2 clusters, 2 nodes each) and run an example job
	bash scripts/demo.sh

bench: setup  ## run every benchmark in bench/ and print its figures (several minutes)
	$(PY) -m bench.placement
	$(PY) bench/node_footprint.py
	$(PY) -m bench.cluster_ingest
	$(PY) -m bench.cluster_schedule
	$(PY) -m bench.failover
	$(PY) bench/deploy_latency.py
	$(PY) -m bench.deploy_cost
	$(PY) -m bench.mass_failover
	$(PY) bench/overload.py

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
