"""Pydantic v2 models for every wire format: the single source of truth.

Submodules: `common` (names, ids, limits), `secrets` (hashing secrets), `resources`,
`job` (job spec, instance lifecycle, events), `node` (join, status), `cluster`
(registration, aggregated report, placement API), `mqtt` (envelope, payloads, topics).
"""
