"""Downloading Essentia models into the models folder (``nomarr-pipeline models fetch``).

A model is a ``<name>.pb`` + ``<name>.json`` pair under a base URL laid out like Essentia's
model site (the default; ``NOMARR_MODELS_URL`` names a mirror, ``http(s)://`` or ``file://``).
A head brings the backbone it names when the folder lacks it.

Each file goes to a hidden temporary file in the target folder, resumed with an HTTP ``Range``
request when a transfer breaks off, checked (its length, no HTML page, the JSON parsed, the
graph walked to its last byte) and only then renamed into place, ``.pb`` before ``.json``; on
any failure nothing of that model is left. The site's ``.onnx`` of the model comes too, kept
only if it answers to the tensor names and widths of the model's JSON.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from nomarr_pipeline.ml.discovery import backbone_names, last_int_dim
from nomarr_pipeline.ml.graphdef import graphdef_problem

DEFAULT_MODELS_URL = "https://essentia.upf.edu/models/"
MODELS_URL_ENV = "NOMARR_MODELS_URL"

# Where Essentia's site keeps the backbones heads name; a head `<task>-<tag>` lives under
# classification-heads/<task>/ (see model_path).
BACKBONE_PATHS: dict[str, str] = {
    **{
        name: f"feature-extractors/discogs-effnet/{name}"
        for name in (
            "discogs-effnet-bs64-1",
            "discogs-effnet-bs1-1",
            *(f"discogs_{kind}_embeddings-effnet-bs64-1"
              for kind in ("artist", "label", "multi", "release", "track")),
        )
    },
    "msd-musicnn-1": "autotagging/msd/msd-musicnn-1",
    "mtt-musicnn-1": "autotagging/mtt/mtt-musicnn-1",
    "audioset-vggish-3": "feature-extractors/vggish/audioset-vggish-3",
}

# What feeds the mood tiers: Essentia's two-class mood heads and danceability on Discogs-EffNet,
# the backbone with the best published accuracy for them (which comes with them).
RECOMMENDED: tuple[str, ...] = (
    "danceability-discogs-effnet-1",
    "mood_acoustic-discogs-effnet-1",
    "mood_aggressive-discogs-effnet-1",
    "mood_electronic-discogs-effnet-1",
    "mood_happy-discogs-effnet-1",
    "mood_party-discogs-effnet-1",
    "mood_relaxed-discogs-effnet-1",
    "mood_sad-discogs-effnet-1",
)

CHUNK_BYTES = 1 << 20
ATTEMPTS = 4  # per file: the first request and up to three resumes or retries
RETRY_PAUSE_S = 1.0
TIMEOUT_S = 60.0
MAX_METADATA_BYTES = 16 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Essentia puts e.g. approachability_regression-… and engagement_2c-… under one task folder.
_TASK_VARIANT = re.compile(r"_(regression|2c|3c)$")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TEMP_MARK = ".nomarr-part-"

Progress = Callable[[str, int, int | None], None]  # (file name, bytes done, total or None)


class FetchError(RuntimeError):
    """A model could not be fetched; the message says why in one line, ``fix`` what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix or ("check the model name (Essentia's list: https://essentia.upf.edu/models.html) "
                           f"and {MODELS_URL_ENV}; the models fetched before it are kept")


class _Missing(FetchError):
    """The site has no such file (an HTTP 404, a missing file:// path)."""


class _Retryable(Exception):
    """A transfer problem worth another request (connection dropped, 5xx, short body)."""


@dataclass
class FetchReport:
    fetched: list[str] = field(default_factory=list)  # model names written, in order
    notes: list[str] = field(default_factory=list)  # published .onnx files not kept, and why
    present: list[str] = field(default_factory=list)  # already in the folder: left alone
    bytes_downloaded: int = 0


def models_url_from_env() -> str:
    return os.environ.get(MODELS_URL_ENV, "").strip() or DEFAULT_MODELS_URL


def model_path(name: str) -> str:
    """The model's path under the base URL, without suffix; ``name`` is a model file name
    (``mood_happy-discogs-effnet-1``) or already a path under the base URL."""
    text = name.strip().removesuffix(".pb").removesuffix(".json").strip("/")
    parts = text.split("/")
    if not text or any(part in ("", ".", "..") for part in parts):
        raise FetchError(f"{name!r} is not a model name or a path under the models URL")
    stem = parts[-1]
    if not _SAFE_NAME.match(stem):
        raise FetchError(f"{name!r}: a model file name has only letters, digits, '_', '-' and '.'")
    if len(parts) > 1:
        return text
    if stem in BACKBONE_PATHS:
        return BACKBONE_PATHS[stem]
    task, sep, tag = stem.partition("-")
    if not sep or not tag:
        raise FetchError(
            f"{name!r} is neither a known backbone ({', '.join(sorted(BACKBONE_PATHS))}) nor a "
            "head '<task>-<embedding>'; give its path under the models URL instead"
        )
    return f"classification-heads/{_TASK_VARIANT.sub('', task)}/{stem}"


def _url(base_url: str, path: str, suffix: str) -> str:
    base = base_url if base_url.endswith("/") else base_url + "/"
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https", "file"):
        raise FetchError(f"models URL {base_url!r} must be an http(s):// or file:// URL")
    return urllib.parse.urljoin(base, urllib.parse.quote(path + suffix))


def present_models(models_dir: Path) -> dict[str, Path]:
    """The complete ``.pb`` + ``.json`` pairs anywhere under ``models_dir``: name → metadata."""
    if not models_dir.is_dir():
        return {}
    return {
        metadata.stem: metadata
        for metadata in sorted(models_dir.rglob("*.json"))
        if metadata.with_suffix(".pb").is_file()
    }


def fetch_models(
    names: Iterable[str],
    models_dir: Path,
    *,
    base_url: str = DEFAULT_MODELS_URL,
    progress: Progress | None = None,
    timeout_s: float = TIMEOUT_S,
) -> FetchReport:
    """Fetch each model (and the backbone of each head) that ``models_dir`` lacks; stops at the
    first that cannot be fetched (:class:`FetchError`), keeping those fetched before it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(models_dir)
    fetcher = _Fetcher(models_dir, base_url, progress, timeout_s)
    for name in dict.fromkeys(names):
        fetcher.fetch(name)
    return fetcher.report


class _Fetcher:
    def __init__(self, models_dir: Path, base_url: str, progress: Progress | None,
                 timeout_s: float) -> None:
        self.models_dir = models_dir
        self.base_url = base_url
        self.progress = progress
        self.timeout_s = timeout_s
        self.report = FetchReport()
        self.present = present_models(models_dir)
        self._in_progress: set[str] = set()

    def fetch(self, name: str, *, needed_by: str | None = None) -> None:
        path = model_path(name)
        stem = path.rsplit("/", 1)[-1]
        if stem in self.present:
            if stem not in self.report.present and stem not in self.report.fetched:
                self.report.present.append(stem)
                self._complete(stem, self.present[stem])
            return
        what = f"{stem} (the backbone of {needed_by})" if needed_by else stem
        if stem in self._in_progress:
            raise FetchError(f"{what}: its metadata names a backbone that needs it in turn")
        self._in_progress.add(stem)
        try:
            self._fetch_pair(path, stem, what)
        finally:
            self._in_progress.discard(stem)
        self.present[stem] = self.models_dir / f"{stem}.json"
        self.report.fetched.append(stem)

    def _complete(self, stem: str, metadata_path: Path) -> None:
        """A head already here may still lack its backbone: fetch that."""
        try:
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # `models list` reports the broken file
        if not isinstance(metadata, dict) or not isinstance(metadata.get("inference"), Mapping):
            return
        backbone = _backbone_name(metadata)
        if backbone and backbone != stem and backbone not in self.present:
            self.fetch(_backbone_source(backbone, metadata), needed_by=stem)

    def _fetch_pair(self, path: str, stem: str, what: str) -> None:
        temps = [self._download(path, ".json", stem, what)]
        try:
            metadata = _check_metadata(temps[0], what)
            backbone = _backbone_name(metadata)
            if backbone and backbone != stem:
                self.fetch(_backbone_source(backbone, metadata), needed_by=stem)
            temps.append(self._download(path, ".pb", stem, what))
            _check_graph(temps[1], what)
            # .pb first: the folder never holds this model's metadata without its graph.
            os.replace(temps[1], self.models_dir / f"{stem}.pb")
            os.replace(temps[0], self.models_dir / f"{stem}.json")
        finally:
            for temp in temps:  # gone once renamed into place
                temp.unlink(missing_ok=True)
        self._fetch_onnx(path, stem, what, metadata)
        _fsync_dir(self.models_dir)

    def _fetch_onnx(self, path: str, stem: str, what: str, metadata: Mapping[str, Any]) -> None:
        """The model's published ``.onnx``, if the site has one that agrees with its JSON."""
        from nomarr_pipeline.ml.onnx_engine import onnx_problem

        try:
            temp = self._download(path, ".onnx", stem, what)
        except _Missing:
            return
        try:
            schema = metadata.get("schema") if isinstance(metadata.get("schema"), Mapping) else {}
            inputs, outputs = schema.get("inputs") or [], schema.get("outputs") or []
            widths = {str(node["name"]): last_int_dim(node) for node in outputs
                      if isinstance(node, Mapping) and "name" in node}
            name = str(inputs[0]["name"]) if inputs and isinstance(inputs[0], Mapping) else None
            problem = onnx_problem(temp, name, widths)
            if problem:
                self.report.notes.append(f"{stem}.onnx not kept: {problem}; {stem}.pb runs on TensorFlow")
                return
            os.replace(temp, self.models_dir / f"{stem}.onnx")
        finally:
            temp.unlink(missing_ok=True)

    def _download(self, path: str, suffix: str, stem: str, what: str) -> Path:
        url = _url(self.base_url, path, suffix)
        temp = self.models_dir / f".{stem}{suffix}{_TEMP_MARK}{secrets.token_hex(4)}"
        try:
            with temp.open("xb") as out:
                self._transfer(url, out, f"{stem}{suffix}", what)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in _NO_SPACE:
                raise FetchError(f"{what}: not enough disk space in {self.models_dir} "
                                 f"({exc.strerror}); nothing of it was kept",
                                 "free some space there and run the command again") from None
            raise FetchError(f"{what}: cannot write to {self.models_dir}: {exc}") from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _transfer(self, url: str, out: BinaryIO, label: str, what: str) -> None:
        last_problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_PAUSE_S * attempt)
            try:
                # What an earlier attempt wrote is kept: this one asks for the rest.
                self._request(url, out, out.tell(), label, what)
                return
            except _Retryable as exc:
                last_problem = str(exc)
        raise FetchError(f"{what}: {url}: {last_problem} (gave up after {ATTEMPTS} attempts)",
                         "check the network (or the mirror) and run the command again")

    def _request(self, url: str, out: BinaryIO, received: int, label: str, what: str) -> None:
        """One request for the bytes from ``received`` on (all, if the server ignores the range)."""
        request = urllib.request.Request(url, headers={"User-Agent": "nomarr-pipeline"})
        if received:
            request.add_header("Range", f"bytes={received}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code == 429:
                raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
            error = _Missing if exc.code == 404 else FetchError
            raise error(f"{what}: {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, urllib.error.URLError) and not isinstance(reason, OSError):
                raise FetchError(f"{what}: {url}: {reason}") from None
            if isinstance(reason, FileNotFoundError):
                raise _Missing(f"{what}: {url}: no such file") from None
            raise _Retryable(f"cannot connect: {reason}") from None
        with response:
            content_type = (response.headers.get("Content-Type") or "").lower()
            if "html" in content_type:
                raise FetchError(f"{what}: {url} returned a web page ({content_type}), not a "
                                 "model: check the models URL (a proxy or login page?)")
            start, total = _body_range(response, received)
            if start == 0 and received:
                out.seek(0)
                out.truncate()
            done = start
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    done += len(chunk)
                    self.report.bytes_downloaded += len(chunk)
                    if total is not None and done > total:
                        raise FetchError(f"{what}: {url} sent more than its {total} bytes")
                    if self.progress is not None:
                        self.progress(label, done, total)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, OSError) and exc.errno in _NO_SPACE | {errno.EIO}:
                    raise
                out.flush()
                raise _Retryable(f"transfer broke off after {done} bytes: {exc}") from None
            out.flush()
            if total is not None and done < total:
                raise _Retryable(f"transfer ended after {done} of {total} bytes")


def _body_range(response: Any, received: int) -> tuple[int, int | None]:
    """Where the response's body starts in the file (``received`` for a matching 206, 0 when
    the server sent the whole file again) and the file's size, when the server says."""
    content_range = response.headers.get("Content-Range")
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range or "")
    start = 0
    if (getattr(response, "status", None) or 200) == 206:
        if not match or int(match.group(1)) != received:
            raise _Retryable(f"server resumed at the wrong place ({content_range})")
        start = received
    if match and match.group(2).isdigit():
        return start, int(match.group(2))
    length = response.headers.get("Content-Length")
    return start, start + int(length) if length and length.isdigit() else None


def _check_metadata(path: Path, what: str) -> dict[str, Any]:
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise FetchError(f"{what}: the .json is larger than {MAX_METADATA_BYTES} bytes")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{what}: the .json is not JSON ({exc})") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("inference"), Mapping):
        raise FetchError(f"{what}: the .json is not Essentia model metadata (no 'inference')")
    return metadata


def _check_graph(path: Path, what: str) -> None:
    problem = graphdef_problem(path.read_bytes())
    if problem:
        raise FetchError(f"{what}: the .pb is unusable: {problem}")


def _backbone_name(metadata: Mapping[str, Any]) -> str | None:
    """The backbone a head's metadata names (``inference.embedding_model``), else None."""
    embedding = metadata["inference"].get("embedding_model")
    names = backbone_names(embedding) if isinstance(embedding, Mapping) else []
    return names[0] if names else None


def _backbone_source(backbone: str, metadata: Mapping[str, Any]) -> str:
    """What to fetch for a backbone: its known path, else its link's path under ``/models/``
    (links in head metadata can be stale: Essentia moved its backbones in 2023)."""
    if backbone in BACKBONE_PATHS:
        return backbone
    link = metadata["inference"]["embedding_model"].get("link")
    if isinstance(link, str) and "/models/" in link:
        relative = urllib.parse.urlsplit(link).path.split("/models/", 1)[1]
        return relative.removesuffix(".pb")
    raise FetchError(
        f"its backbone {backbone!r} is not a known Essentia backbone: fetch it by its path "
        "under the models URL"
    )


def _fsync_dir(folder: Path) -> None:
    # The renames survive a crash only once the folder itself is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


STALE_TEMP_AGE_S = 3600.0


def remove_stale_temp_files(models_dir: Path, older_than_s: float = STALE_TEMP_AGE_S) -> int:
    """Delete the temporary files a killed fetch left, once too old to belong to a fetch still
    running; returns how many."""
    removed = 0
    now = time.time()
    for temp in models_dir.glob(f".*{_TEMP_MARK}*"):
        with contextlib.suppress(OSError):
            if temp.is_file() and now - temp.stat().st_mtime > older_than_s:
                temp.unlink()
                removed += 1
    return removed
