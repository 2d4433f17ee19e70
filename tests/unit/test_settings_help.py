"""`--help` of the three programs names every setting's environment variable and its
default, built by one piece of code (`schemas.settings_cli.option_help`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from cluster_orchestrator.settings import ClusterSettings
from cluster_orchestrator.settings import build_parser as cluster_parser
from node_engine.settings import FLAG_NAMES, NodeEngineSettings
from node_engine.settings import build_parser as node_parser
from root_orchestrator.settings import RootSettings
from root_orchestrator.settings import build_parser as root_parser
from schemas.settings_cli import default_text, option_help

PROGRAMS: list[tuple[str, Callable[[], argparse.ArgumentParser], type[BaseModel], str]] = [
    ("root-orchestrator", root_parser, RootSettings, "EDGE_"),
    ("cluster-orchestrator", cluster_parser, ClusterSettings, "EDGE_"),
    ("node-engine", node_parser, NodeEngineSettings, "EDGE_NODE_"),
]


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> help text of every option (whitespace as one space)."""
    return {
        a.dest: " ".join((a.help or "").split())
        for a in parser._actions
        if a.option_strings and a.dest != "help"
    }


@pytest.mark.parametrize(
    ("prog", "make", "model", "prefix"), PROGRAMS, ids=[p[0] for p in PROGRAMS]
)
def test_every_setting_shows_its_env_name_and_default(
    prog: str, make: Callable[[], argparse.ArgumentParser], model: type[BaseModel], prefix: str
) -> None:
    parser = make()
    assert parser.prog == prog
    options = _options(parser)
    text = " ".join(parser.format_help().split())
    for name, info in model.model_fields.items():
        assert name in options, f"{prog}: no option for {name}"
        env = prefix + name.upper()
        assert f"[env {env}" in options[name], (prog, name, options[name])
        default = default_text(info)
        if info.is_required():
            assert "(required)" in options[name], (prog, name)
        elif default is not None and name not in ("name", "shedding"):
            assert f"(default: {default})" in options[name], (prog, name, options[name])
        flag = (
            FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
            if prefix == "EDGE_NODE_"
            else ("--" + name.replace("_", "-"))
        )
        assert flag in text, (prog, flag)
    assert f"[env {prefix}CONFIG]" in options["config"]


def test_secrets_have_no_default_shown() -> None:
    options = _options(cluster_parser())
    assert "(default" not in options["operator_token"]
    assert "(default" not in options["broker_admin_password"]


def test_option_help_format() -> None:
    assert option_help("listen port", "EDGE_PORT", "8000") == (
        "listen port [env EDGE_PORT] (default: 8000)"
    )
    assert option_help("url", "EDGE_NODE_CLUSTER_URL", None, required=True) == (
        "url [env EDGE_NODE_CLUSTER_URL] (required)"
    )
    # argparse expands % in help: a literal percent is escaped
    assert option_help("cpu at 90%", "EDGE_X", None) == "cpu at 90%% [env EDGE_X]"
