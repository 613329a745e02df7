"""The page's ASGI app: the JSON API under ``/api/`` (``docs/ui-api.md``), the page's own
ES modules and CSS, and plotly.js from the installed ``plotly`` package.

Every read goes through the ``trackside.Api`` given (a local store or a team server). The
handlers are plain functions: Starlette runs them in its thread pool, so a slow read never
holds up another request.
"""

from __future__ import annotations

import gzip
import hmac
import mimetypes
import os
import threading
from importlib import resources
from typing import Any, Callable, Optional
from urllib.parse import urlencode

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from trackside.contracts.errors import ArtifactNotFoundError, RunNotFoundError
from trackside.store import StoreError

from . import reads
from .reads import BadRequest

# the real folder (an editable install links each file; the static server follows no links)
STATIC = os.path.join(os.path.dirname(os.path.realpath(__file__)), "static")
TOKEN_COOKIE = "trackside_token"


def plotly_js() -> tuple[str, str]:
    """The path and version of plotly.js inside the installed ``plotly`` package. Raises
    ImportError naming the extra when plotly is missing."""
    try:
        import plotly  # the chart library ships plotly.min.js as package data
    except ImportError:
        raise ImportError("trackside ui needs plotly: pip install 'trackside[ui]'") from None
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ImportError(f"the installed plotly {plotly.__version__} has no package_data/plotly.min.js")
    return str(path), plotly.__version__


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # numpy arrays as lists, NaN and infinities as null
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _error(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


def _int(request: Request, name: str, default: Optional[int] = None) -> Optional[int]:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None


def _float(request: Request, name: str) -> Optional[float]:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {raw!r}") from None


def _list(request: Request, name: str) -> list[str]:
    raw = request.query_params.get(name) or ""
    return [p for p in raw.split(",") if p]


def _required(request: Request, name: str) -> str:
    v = request.query_params.get(name)
    if not v:
        raise BadRequest(f"the query needs {name}=...")
    return v


def _file(content: bytes, fmt: Optional[str], kind: str, download: bool, name: str) -> Response:
    media_type = mimetypes.guess_type(f"x.{fmt}")[0] if fmt else None
    if media_type is None:
        media_type = "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    if kind == "html" or media_type == "text/html":
        # logged HTML runs in a sandbox of its own origin, even when opened outside its iframe
        headers["Content-Security-Policy"] = "sandbox allow-scripts"
    if download or kind in ("object3D", "molecule", "file"):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        headers["Content-Disposition"] = f'attachment; filename="{safe}.{fmt or "bin"}"'
    return Response(content, media_type=media_type, headers=headers)


class TokenGate:
    """Every request must carry the token: ``Authorization: Bearer <token>`` (scripts) or the
    cookie a page gets by opening any page once with ``?token=<token>`` (then redirected to
    the same URL without it)."""

    def __init__(self, app, token: Optional[str]):
        self.app = app
        self.token = token.encode() if token else None

    def _ok(self, given: Optional[str]) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and self._ok(given) and request.method == "GET":
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else None
        if self._ok(bearer) or self._ok(request.cookies.get(TOKEN_COOKIE)):
            await self.app(scope, receive, send)
            return
        message = (
            "this trackside page needs its token: open the address `trackside ui` (or the server) printed, "
            "which ends in ?token=..., or send Authorization: Bearer <token>"
        )
        if request.url.path.startswith("/api/"):
            response = _error(401, message)
        else:
            response = HTMLResponse(f"<!doctype html><title>trackside</title><p>{message}</p>", status_code=401)
        await response(scope, receive, send)


class _Compressed:
    """A file's gzip, made once in a thread of its own from the moment the page's app is made
    (plotly.js: 4.6 MB, ~0.5 s to compress), so that no visitor waits for it."""

    def __init__(self, path: str):
        self._done = threading.Event()
        self._data = b""
        threading.Thread(target=self._make, args=(path,), name="gzip-plotly", daemon=True).start()

    def _make(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                self._data = gzip.compress(f.read(), 9)
        except OSError:
            pass  # sent plain then
        finally:
            self._done.set()

    def bytes(self) -> Optional[bytes]:
        """The gzip, or None when the file could not be read (the caller sends it plain)."""
        self._done.wait()
        return self._data or None


def create_app(api, *, token: Optional[str] = None, title: str = "trackside") -> Starlette:
    """The page's app over ``api`` (a ``trackside.Api`` of a run root or a team server).
    ``token``: every request must carry it (see ``TokenGate``). The caller keeps ``api`` and
    closes it."""
    plotly_path, plotly_version = plotly_js()
    plotly_gz = _Compressed(plotly_path)  # gzip on the fly cost a first visit ~0.2 s of this server's CPU
    tables = reads.TableCache()
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        index_html = (
            f.read().replace("{{PLOTLY}}", f"/static/plotly-{plotly_version}.min.js").replace("{{TITLE}}", title)
        )

    def handler(fn: Callable[..., Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                result = fn(request)
            except (RunNotFoundError, ArtifactNotFoundError, KeyError, FileNotFoundError) as e:
                return _error(404, str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
            except (BadRequest, ValueError, TypeError) as e:
                return _error(400, str(e))
            except StoreError as e:
                return _error(502, str(e))
            return result if isinstance(result, Response) else JSON(result)

        return endpoint

    def run_of(request: Request):
        return api.run(request.path_params["run_id"])

    def projects(request):
        return {"projects": reads.projects(api)}

    def runs(request):
        return reads.runs_page(
            api,
            request.query_params.get("project") or None,
            where=request.query_params.get("q", ""),
            order=request.query_params.get("order", "-created_at"),
            page=max(0, _int(request, "page", 0) or 0),
            per_page=_int(request, "per_page", 50) or 50,
            columns=tuple(_list(request, "columns")),
            group=request.query_params.get("group", ""),
        )

    def run_detail(request):
        return reads.run_detail(run_of(request))

    def compare(request):
        return reads.compare(api, _list(request, "runs"))

    def buckets(request):
        return reads.buckets(
            api,
            _list(request, "runs"),
            _required(request, "key"),
            samples=_int(request, "samples", 1000) or 1000,
            min_step=_int(request, "min_step"),
            max_step=_int(request, "max_step"),
            x_axis=request.query_params.get("x") or "_step",
        )

    def tail(request):
        run = run_of(request)
        since = _int(request, "since")
        return reads.tail(run, _list(request, "keys"), -1 if since is None else since)

    def system(request):
        return reads.system(run_of(request), _float(request, "since"))

    def media(request):
        run = run_of(request)
        key = _required(request, "key")
        step = _int(request, "step")
        if step is None:
            return reads.media_steps(run, key)
        base = {"key": key, "step": step}

        def file_url(item: int, mask: Optional[str] = None) -> str:
            q = {**base, "item": item}
            if mask is not None:
                q["mask"] = mask
            return f"/api/runs/{run.id}/media/file?{urlencode(q)}"

        return reads.media_at(run, key, step, file_url)

    def media_file(request):
        run = run_of(request)
        key = _required(request, "key")
        step = _int(request, "step")
        if step is None:
            raise BadRequest("the query needs step=...")
        item = _int(request, "item", 0) or 0
        mask = request.query_params.get("mask")
        content, fmt, kind = reads.media_file(run, key, step, item, mask)
        return _file(content, fmt, kind, bool(request.query_params.get("download")), f"{key}-{step}-{item}")

    def histograms(request):
        return reads.histograms(run_of(request), _required(request, "key"))

    def table_versions(request):
        return {"tables": reads.table_versions(run_of(request))}

    def table(request):
        run = run_of(request)
        key = _required(request, "key")
        increment = _int(request, "increment")

        def cell_url(version: str, row: int, col: int) -> str:
            q: dict[str, Any] = {"key": key, "version": version, "row": row, "col": col}
            if increment is not None:
                q["increment"] = increment
            return f"/api/runs/{run.id}/table/cell?{urlencode(q)}"

        return reads.table_page(
            tables,
            run,
            key,
            version=request.query_params.get("version") or None,
            increment=increment,
            where=request.query_params.get("where", ""),
            group_by=request.query_params.get("group", ""),
            sort=request.query_params.get("sort", ""),
            desc=request.query_params.get("desc") in ("1", "true"),
            page=max(0, _int(request, "page", 0) or 0),
            per_page=_int(request, "per_page", 50) or 50,
            cell_url=cell_url,
        )

    def table_cell(request):
        run = run_of(request)
        key = _required(request, "key")
        content, fmt, kind = reads.table_cell(
            tables,
            run,
            key,
            request.query_params.get("version") or None,
            _int(request, "increment"),
            _int(request, "row", 0) or 0,
            _int(request, "col", 0) or 0,
        )
        return _file(content, fmt, kind, False, f"{key}-cell")

    def console(request):
        stream = request.query_params.get("stream") or None
        return reads.console(
            run_of(request),
            q=request.query_params.get("q", ""),
            stream=stream,
            page=_int(request, "page"),
            per_page=_int(request, "per_page", 200) or 200,
            since=_int(request, "since"),
        )

    def artifacts(request):
        return {"artifacts": reads.artifacts(run_of(request))}

    def artifact_file(request):
        art = api.artifact(_required(request, "name"))
        entry = _required(request, "entry")
        path = art.get_path(entry)
        return FileResponse(
            path,
            filename=os.path.basename(entry),
            headers={"X-Content-Type-Options": "nosniff"},
            media_type="application/octet-stream",
        )

    def page(request: Request) -> Response:
        return HTMLResponse(index_html, headers={"Cache-Control": "no-cache"})

    def plotly(request: Request) -> Response:
        # the URL names plotly's version, so a browser may keep it
        headers = {"Cache-Control": "public, max-age=604800, immutable", "Vary": "Accept-Encoding"}
        gz = plotly_gz.bytes() if "gzip" in request.headers.get("accept-encoding", "") else None
        if gz is not None:
            return Response(gz, media_type="text/javascript", headers={**headers, "Content-Encoding": "gzip"})
        return FileResponse(plotly_path, media_type="text/javascript", headers=headers)

    api_routes = [
        Route("/api/projects", handler(projects)),
        Route("/api/runs", handler(runs)),
        Route("/api/buckets", handler(buckets)),
        Route("/api/compare", handler(compare)),
        Route("/api/runs/{run_id}", handler(run_detail)),
        Route("/api/runs/{run_id}/tail", handler(tail)),
        Route("/api/runs/{run_id}/system", handler(system)),
        Route("/api/runs/{run_id}/media", handler(media)),
        Route("/api/runs/{run_id}/media/file", handler(media_file)),
        Route("/api/runs/{run_id}/histograms", handler(histograms)),
        Route("/api/runs/{run_id}/tables", handler(table_versions)),
        Route("/api/runs/{run_id}/table", handler(table)),
        Route("/api/runs/{run_id}/table/cell", handler(table_cell)),
        Route("/api/runs/{run_id}/console", handler(console)),
        Route("/api/runs/{run_id}/artifacts", handler(artifacts)),
        Route("/api/artifacts/file", handler(artifact_file)),
        Route("/api/{rest:path}", lambda request: _error(404, f"no API call {request.url.path}")),
    ]
    routes = [
        *api_routes,
        Route(f"/static/plotly-{plotly_version}.min.js", plotly),
        Mount("/static", app=_Static(directory=STATIC), name="static"),
        Route("/{rest:path}", page),
    ]
    middleware = [Middleware(GZipMiddleware, minimum_size=1024), Middleware(TokenGate, token=token)]
    return Starlette(routes=routes, middleware=middleware)


class _Static(StaticFiles):
    """The page's modules and CSS: revalidated on each load (ETag), so an upgrade shows at once."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response
