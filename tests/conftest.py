"""Shared pytest configuration: fixtures live in tests/fixtures and are loaded here."""

pytest_plugins = [
    "tests.fixtures.mongo",
    "tests.fixtures.broker",
    "tests.fixtures.images",
    "tests.fixtures.task_paths",
]
