"""A real HTTP server in a thread, serving generated models laid out like Essentia's model
site, with scripted faults: the other end of every ``models fetch`` test."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nomarr_pipeline.ml import fetch
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.fetch import RECOMMENDED, model_path
from nomarr_pipeline_tests.ml.demo_heads import write_demo_head

PREFIX = "/models/"
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>"

# One fault per request to a path, used up in order; then the path is served normally.
#   404 / 503      that status, with an HTML body
#   truncate       the full Content-Length, half the body, then the connection closes
#   truncate-open  the same without Content-Length (the close is the only end marker)
#   html           200 text/html: a login page instead of the file
#   html-binary    200 application/octet-stream, but the body is that page
#   ignore-range   the whole file with 200, whatever Range asked for
FAULTS = ("404", "503", "truncate", "truncate-open", "html", "html-binary", "ignore-range")


@dataclass
class ModelSite:
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    url: str = ""
    source: Path | None = None  # the folder of the published models

    def fail(self, path: str, *faults: str) -> None:
        assert all(fault in FAULTS for fault in faults), faults
        self.faults.setdefault(path, []).extend(faults)

    def requested(self, suffix: str) -> list[str | None]:
        """The Range header of each request for paths ending in ``suffix``."""
        return [rng for path, rng in self.requests if path.endswith(suffix)]


def site_path(name: str, suffix: str) -> str:
    return PREFIX + model_path(name) + suffix


def generated_models(dest: Path) -> Path:
    """Every demo model plus the recommended heads the demo lacks, in one flat folder."""
    write_demo_models(dest)
    for name in RECOMMENDED:
        if not (dest / f"{name}.pb").exists():
            task = name.split("-", 1)[0]
            if task == "danceability":
                classes = ("danceable", "not_danceable")
            else:
                mood = task.removeprefix("mood_")
                classes = (mood, f"non_{mood}") if mood != "aggressive" else (mood, f"not_{mood}")
            write_demo_head(dest, name, classes)
    return dest


def publish(site: ModelSite, source: Path) -> None:
    """Put every model of ``source`` at its place on the site."""
    site.source = source
    for graph in sorted(source.glob("*.pb")):
        for suffix in (".pb", ".json", ".onnx"):
            if graph.with_suffix(suffix).is_file():
                site.files[site_path(graph.stem, suffix)] = graph.with_suffix(suffix).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    site: ModelSite

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        site = self.site
        path = self.path.split("?", 1)[0]
        wanted = self.headers.get("Range")
        site.requests.append((path, wanted))
        queue = site.faults.get(path) or []
        fault = queue.pop(0) if queue else None
        if fault in ("404", "503") or path not in site.files:
            self._send(int(fault or 404), HTML_PAGE, "text/html")
            return
        body = site.files[path]
        if fault == "html":
            self._send(200, HTML_PAGE, "text/html; charset=utf-8")
        elif fault == "html-binary":
            self._send(200, HTML_PAGE, "application/octet-stream")
        elif fault in ("truncate", "truncate-open"):
            self._send(200, body, "application/octet-stream", cut=len(body) // 2,
                       length=fault == "truncate")
        else:
            match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
            if match and fault != "ignore-range":
                start = int(match.group(1))
                self._send(206, body[start:], "application/octet-stream",
                           content_range=f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self._send(200, body, "application/octet-stream")

    def _send(self, status: int, body: bytes, content_type: str, *, cut: int | None = None,
              length: bool = True, content_range: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[:cut] if cut is not None else body)
        self.wfile.flush()
        self.close_connection = True


@contextmanager
def serve(site: ModelSite) -> Iterator[ModelSite]:
    handler = type("SiteHandler", (_Handler,), {"site": site})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="model-site", daemon=True)
    thread.start()
    site.url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def model_site(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelSite]:
    """The generated models (``site.source``) published on a running site,
    ``NOMARR_MODELS_URL`` pointing at it (import this fixture into a test module to use it)."""
    monkeypatch.setattr(fetch, "RETRY_PAUSE_S", 0.01)
    site = ModelSite()
    publish(site, generated_models(tmp_path_factory.mktemp("published")))
    with serve(site) as running:
        monkeypatch.setenv("NOMARR_MODELS_URL", running.url)
        yield running
