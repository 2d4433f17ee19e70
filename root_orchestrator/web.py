"""The web dashboard at `/ui` and the offline API docs at `/docs` and `/redoc`.

Everything is served from files shipped inside this package (`root_orchestrator/static`):
the dashboard (plain HTML, one JS and one CSS file, no build step) and the vendored
Swagger UI and ReDoc bundles, so the pages work on a site without internet access.
The pages themselves need no token; every API call they make sends the operator token
as a bearer header (see docs/dashboard.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = [
    "DASHBOARD_CSP",
    "DOCS_ASSETS",
    "DOCS_CSP",
    "UI_PATH",
    "install_web",
    "static_dir",
]

UI_PATH = "/ui"
DOCS_ASSETS = "/docs/assets"

#: The dashboard's policy: only its own files, no inline script or style, API calls to
#: this origin only, and no framing (clickjacking).
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The docs pages carry FastAPI's inline bootstrap script; everything else is same-origin,
#: so a browser refuses any CDN even if a bundle asked for one.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def static_dir(*parts: str) -> Path:
    """A directory of the package's static files, found through the installed package."""
    path = Path(str(files("root_orchestrator").joinpath("static", *parts)))
    if not path.is_dir():
        raise FileNotFoundError(f"package data missing: {path} (a broken install?)")
    return path


@dataclass(frozen=True, slots=True)
class _RouteLabel:
    """What the metrics middleware reads from `scope["route"]`: a path template."""

    path: str


class _SecuredStatic(StaticFiles):
    """Static files with security headers (and a CSP) on every response."""

    def __init__(self, directory: Path, *, mount: str, csp: str, html: bool = False) -> None:
        super().__init__(directory=directory, html=html)
        self._headers = {"Content-Security-Policy": csp, **_COMMON_HEADERS}
        self._label = _RouteLabel(mount + "/{path}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one file; label the request for the HTTP metrics (one label per mount)."""
        scope["route"] = self._label
        await super().__call__(scope, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file (or error) response, with the headers added."""
        response = await super().get_response(path, scope)
        response.headers.update(self._headers)
        # revalidate (ETag, 304) on every load: an upgraded root serves new files at once
        response.headers["Cache-Control"] = "no-cache"
        return response


def _docs_router(openapi_url: str, title: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    headers = {"Content-Security-Policy": DOCS_CSP, **_COMMON_HEADERS}

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @router.get("/docs")
    async def swagger(request: Request) -> HTMLResponse:
        """Swagger UI with its bundle served from this package."""
        base = prefix(request)
        page = get_swagger_ui_html(
            openapi_url=base + openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{base}{DOCS_ASSETS}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{DOCS_ASSETS}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{base}{DOCS_ASSETS}/swagger-ui/favicon-32x32.png",
            # no spec validation against the public validator service
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(headers)
        return page

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc with its bundle served from this package, without web fonts."""
        base = prefix(request)
        page = get_redoc_html(
            openapi_url=base + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{base}{DOCS_ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{base}{DOCS_ASSETS}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
        page.headers.update(headers)
        return page

    return router


def _ui_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def to_ui(request: Request) -> RedirectResponse:
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return RedirectResponse(base + UI_PATH + "/", status_code=307)

    @router.get("/")
    async def root(request: Request) -> RedirectResponse:
        """The root URL opens the dashboard."""
        return to_ui(request)

    @router.get(UI_PATH)
    async def ui_no_slash(request: Request) -> RedirectResponse:
        """`/ui` -> `/ui/`, so the page's relative URLs resolve under it."""
        return to_ui(request)

    return router


def install_web(app: FastAPI) -> None:
    """Add the dashboard, the `/` redirect and the offline `/docs` and `/redoc` to `app`.

    Create `app` with `docs_url=None, redoc_url=None` so FastAPI's CDN pages are not
    registered first.
    """
    app.include_router(_ui_router())
    app.include_router(_docs_router(app.openapi_url or "/openapi.json", app.title))
    app.mount(
        DOCS_ASSETS,
        _SecuredStatic(static_dir("vendor"), mount=DOCS_ASSETS, csp=DOCS_CSP),
        name="docs-assets",
    )
    app.mount(
        UI_PATH,
        _SecuredStatic(static_dir("ui"), mount=UI_PATH, csp=DASHBOARD_CSP, html=True),
        name="ui",
    )
