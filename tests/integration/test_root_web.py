"""The dashboard files and the offline API docs as HTTP resources (issue 14).

In-process app against a real SQLite store: what `/`, `/ui`, `/docs` and `/redoc`
serve, their headers (CSP), that every file they reference is served, that nothing
names another host, and that the files ship as package data (found through the
installed package, and inside a built wheel). The browser tests are in
tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from root_orchestrator.app import create_app
from root_orchestrator.settings import RootSettings
from root_orchestrator.web import DASHBOARD_CSP, static_dir
from tests.integration.test_root_support import AUTH, OPERATOR_TOKEN, REGISTRATION_TOKEN

REPO = Path(__file__).resolve().parents[2]
#: The dashboard's own files (not the vendored docs bundles) stay under this.
DASHBOARD_BUDGET_BYTES = 64 * 1024


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = RootSettings(
        store_url=f"sqlite:///{tmp_path / 'root.db'}",
        operator_tokens=[OPERATOR_TOKEN],
        registration_token=REGISTRATION_TOKEN,
    )
    with TestClient(create_app(settings)) as c:
        yield c


class _Refs(HTMLParser):
    """Collects what an HTML page references and what it inlines."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []
        self.style_attrs = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            value = values.get(name)
            if value:
                self.refs.append(value)
        self.inline_handlers += [name for name, _ in attrs if name.startswith("on")]
        self.style_attrs += "style" in values
        self._in_script_without_src = tag == "script" and not values.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def _parse(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def test_root_and_ui_redirect_to_the_dashboard(client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 307, path
        assert response.headers["location"] == "/ui/"


def test_dashboard_page_is_strict_and_all_its_files_are_served(client: TestClient) -> None:
    page = client.get("/ui/")  # no token needed for the page; the API calls carry it
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == DASHBOARD_CSP
    assert "script-src 'self';" in DASHBOARD_CSP and "unsafe" not in DASHBOARD_CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    parsed = _parse(page.text)
    assert parsed.inline_scripts == 0 and not parsed.inline_handlers and not parsed.style_attrs
    assert sorted(parsed.refs) == ["#/clusters", "#/jobs", "app.css", "app.js", "favicon.svg"]
    for ref in ("app.css", "app.js", "favicon.svg"):
        response = client.get("/ui/" + ref)
        assert response.status_code == 200, ref
        assert response.headers["content-security-policy"] == DASHBOARD_CSP
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/nothing-here.js").status_code == 404
    assert client.get("/ui/../app.py").status_code == 404


def test_dashboard_script_never_writes_html_and_names_no_host() -> None:
    ui = static_dir("ui")
    script = (ui / "app.js").read_text()
    code = re.sub(r"/\*.*?\*/", "", script, flags=re.S)  # comments may name the sinks
    code = re.sub(r"^\s*//.*$", "", code, flags=re.M)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink
    assert "EventSource" not in code  # the stream is read with fetch() (bearer header)
    assert "createElement" in code and "textContent" in code
    assert "sessionStorage" in script and "localStorage" not in script
    for path in ui.iterdir():
        text = path.read_text()
        hosts = [u for u in re.findall(r"https?://[^\s\"')]+", text) if "www.w3.org" not in u]
        assert not hosts, (path.name, hosts)
    total = sum(p.stat().st_size for p in ui.iterdir())
    assert total < DASHBOARD_BUDGET_BYTES, total  # docs/dashboard.md states the size


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_pages_use_only_local_assets(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.text), page.text
    refs = [r for r in _parse(page.text).refs if not r.startswith("#")]
    assert len(refs) >= 2, refs
    for ref in refs:
        assert ref.startswith("/docs/assets/"), ref
        response = client.get(ref)
        assert response.status_code == 200, ref
        assert len(response.content) > 100, ref
    # the page loads the API description from this server
    assert "/openapi.json" in page.text
    assert client.get("/openapi.json").status_code == 200


def test_vendored_bundles_name_no_cdn() -> None:
    vendor = static_dir("vendor")
    redoc = (vendor / "redoc" / "redoc.standalone.js").read_text()
    assert "cdn.redoc.ly" not in redoc  # the one patch, see scripts/vendor_docs_assets.sh
    for name in ("swagger-ui/LICENSE", "redoc/LICENSE", "SOURCES.txt"):
        assert (vendor / name).is_file(), name


def test_web_routes_are_not_api_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p in ("/", "/ui", "/docs", "/redoc")]
    # the dashboard's calls are the ordinary API: the token is required there
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers=AUTH).status_code == 200


def test_events_tail_returns_the_newest_events(client: TestClient) -> None:
    from tests.integration.test_root_support import job_body

    for i in range(3):
        assert client.post("/api/v1/jobs", json=job_body(f"tail-{i}"), headers=AUTH).status_code
    page = client.get("/api/v1/events", params={"tail": 2}, headers=AUTH).json()
    # the background reconciler may record more events after the page was read
    everything = client.get("/api/v1/events", params={"limit": 1000}, headers=AUTH).json()
    seqs = [e["seq"] for e in everything["events"]]
    latest = page["events"][-1]["seq"]
    assert [e["seq"] for e in page["events"]] == [s for s in seqs if s <= latest][-2:]
    assert len(seqs) > 2 and page["next_since"] == latest
    assert client.get("/api/v1/events", params={"tail": 0}, headers=AUTH).status_code == 422


def test_static_files_are_package_data_of_the_installed_package() -> None:
    import root_orchestrator

    package_dir = Path(root_orchestrator.__file__).parent
    for sub, names in {
        "ui": ["index.html", "app.js", "app.css", "favicon.svg"],
        "vendor": ["swagger-ui/swagger-ui-bundle.js", "redoc/redoc.standalone.js"],
    }.items():
        found = static_dir(sub)
        assert found.parent.parent == package_dir
        for name in names:
            assert (found / name).is_file(), name


@pytest.mark.slow
def test_a_built_wheel_contains_the_static_files(tmp_path: Path) -> None:
    """Build a wheel from a copy of the sources (pip, isolated build) and look inside."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "tests", "bench", "data"
    )
    shutil.copytree(REPO, src, ignore=ignore)
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("edge_orchestrator-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "root_orchestrator/static/ui/index.html",
        "root_orchestrator/static/ui/app.js",
        "root_orchestrator/static/ui/app.css",
        "root_orchestrator/static/ui/favicon.svg",
        "root_orchestrator/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "root_orchestrator/static/vendor/swagger-ui/swagger-ui.css",
        "root_orchestrator/static/vendor/swagger-ui/LICENSE",
        "root_orchestrator/static/vendor/redoc/redoc.standalone.js",
        "root_orchestrator/static/vendor/redoc/LICENSE",
    ):
        assert name in names, name
