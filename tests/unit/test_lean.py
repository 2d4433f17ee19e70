"""Import hygiene of the node engine (node_engine/lean.py), each case in a fresh
interpreter: what the engine's process would import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_after(code: str) -> dict[str, object]:
    """Run `code` in a new interpreter after the engine's first footprint measures; the
    JSON it prints."""
    prelude = (
        "import json, sys\n"
        "from node_engine import lean\n"
        "lean.hide_openssl()\n"
        "lean.import_pydantic_settings()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    doc: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


def loaded(names: list[str]) -> str:
    return f"print(json.dumps({{n: sys.modules.get(n) is not None for n in {names!r}}}))\n"


def test_docker_runtime_imports_neither_the_sdk_nor_ssl() -> None:
    names = ["docker", "requests", "urllib3", "ssl", "_ssl"]
    got = modules_after(
        "import node_engine.runtimes.docker\n"
        "from node_engine.runtimes.docker_api import DockerClient\n"
        "DockerClient('unix:///nonexistent.sock')\n" + loaded(names)
    )
    assert got == dict.fromkeys(names, False)


def test_paho_without_dnspython() -> None:
    got = modules_after(
        "paho = lean.import_paho_client()\n"
        "print(json.dumps({'dns': 'dns' in sys.modules and sys.modules['dns'] is not None,"
        " 'placeholder_left': 'dns' in sys.modules, 'have_dns': paho.HAVE_DNS}))\n"
    )
    assert got == {"dns": False, "placeholder_left": False, "have_dns": False}
    # nothing else is affected: dnspython still imports afterwards (if installed)
    got = modules_after(
        "lean.import_paho_client()\n"
        "import importlib.util\n"
        "ok = importlib.util.find_spec('dns') is None\n"
        "if not ok:\n"
        "    import dns.resolver\n"
        "    ok = True\n"
        "print(json.dumps({'ok': ok}))\n"
    )
    assert got == {"ok": True}


def test_shared_settings_loader_loads_no_file_parser_the_node_does_not_use(
    tmp_path: Path,
) -> None:
    """The node uses the orchestrators' loader (schemas/settings_file.py): reading its
    settings, even from a JSON file, imports neither yaml nor tomllib."""
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"cluster_url": "http://c:1", "name": "lean"}))
    names = ["yaml", "tomllib", "asyncio"]
    got = modules_after(
        "from node_engine.settings import load_settings\n"
        f"assert load_settings(['--config', {str(config)!r}]).name == 'lean'\n" + loaded(names)
    )
    assert got == dict.fromkeys(names, False)
