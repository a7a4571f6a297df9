"""The ArangoDB engine, checked through the requests it sends.

No ArangoDB server can run on the build machines, so python-arango is given a recording HTTP
client (``ArangoClient(http_client=...)``) that answers like a server would. Each test asserts
the endpoints hit, the AQL and its bind variables, the index definitions sent on open, that
writes are batched, and that canned answers map to the protocol's return shapes. The same
engine runs the shared contract suite against a real server when NOMARR_TEST_ARANGO_URL is set.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
from arango.http import HTTPClient
from arango.response import Response

from nomarr_pipeline.settings import Settings
from nomarr_pipeline.store import (
    COLLECTIONS,
    AnalysisClaim,
    HeadVersion,
    SparseHistogram,
    Store,
    StoreError,
    open_store,
)
from nomarr_pipeline.store import arango as arango_module
from nomarr_pipeline.store.arango import (
    ANALYSIS_ERRORS_RESET,
    ANALYSIS_INDEXES,
    INDEXES,
    SCHEMA_VERSION,
    ArangoStore,
    encode_key,
)
from nomarr_pipeline.store.schema import analysis_error_key
from nomarr_pipeline_tests.calibration.binning import label_histogram

URL = "http://arango.test:8529"
DB = "nomarr"
PASSWORD = "pa55-w0rd-never-logged"
HEAD = HeadVersion("effnet-discogs-effnet-1", "mood_happy", "tv1")

CursorAnswer = list[Any] | Callable[[str, dict[str, Any]], list[Any]]


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    headers: dict[str, str]

    @property
    def query(self) -> str:
        return self.body["query"] if isinstance(self.body, dict) else ""

    @property
    def bind_vars(self) -> dict[str, Any]:
        return self.body.get("bindVars", {}) if isinstance(self.body, dict) else {}


@dataclass
class FakeArango(HTTPClient):
    """A recording stand-in for an ArangoDB server, speaking its HTTP API's JSON."""

    database_exists: bool = True
    schema_version: int | None = SCHEMA_VERSION
    collections: set[str] = field(default_factory=set)
    reject_auth: bool = False
    user: str = "root"  # the only user it lets in (with PASSWORD)
    forbid_create_database: bool = False
    requests: list[Recorded] = field(default_factory=list)
    # (fragment of the AQL text, rows or a function of (query, bind vars)); first match wins.
    cursor_answers: list[tuple[str, CursorAnswer]] = field(default_factory=list)
    cursor_failures: list[str] = field(default_factory=list)
    transaction_ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 1000)))

    def answer(self, fragment: str, rows: CursorAnswer) -> None:
        self.cursor_answers.append((fragment, rows))

    def fail(self, fragment: str) -> None:
        self.cursor_failures.append(fragment)

    def create_session(self, host: str) -> requests.Session:
        return requests.Session()  # never used: send_request answers itself

    def send_request(
        self,
        session: requests.Session,
        method: str,
        url: str,
        headers: MutableMapping[str, str] | None = None,
        params: MutableMapping[str, str] | None = None,
        data: Any = None,
        auth: tuple[str, str] | None = None,
    ) -> Response:
        path = unquote(urlsplit(url).path)
        body = json.loads(data) if isinstance(data, str) and data else None
        self.requests.append(Recorded(method, path, dict(params or {}), body, dict(headers or {})))
        if self.reject_auth or auth != (self.user, PASSWORD):
            status, payload = 401, _error(401, 11, "not authorized to execute this request")
        else:
            status, payload = self._route(method, path, dict(params or {}), body)
        return Response(
            method=method,
            url=url,
            headers={"content-type": "application/json"},
            status_code=status,
            status_text="OK" if status < 400 else "ERROR",
            raw_body=json.dumps(payload),
        )

    # ---- the server ---------------------------------------------------------------------
    def _route(self, method: str, path: str, params: dict[str, str], body: Any) -> tuple[int, Any]:
        match = re.fullmatch(r"/_db/([^/]+)(/_api/.*)", path)
        assert match, f"request outside a database: {path}"
        database, endpoint = match.groups()
        if database == "_system":
            return self._system(method, endpoint, body)
        assert database == DB
        if not self.database_exists:
            return 404, _error(404, 1228, "database not found")
        if (method, endpoint) == ("get", "/_api/version"):
            return 200, {"server": "arango", "version": "3.12.4", "license": "community"}
        if (method, endpoint) == ("get", "/_api/document/nomarr_meta/schema"):
            if self.schema_version is None:
                return 404, _error(404, 1203, "collection or view not found: nomarr_meta")
            return 200, {
                "_key": "schema",
                "_id": "nomarr_meta/schema",
                "_rev": "_a",
                "version": self.schema_version,
            }
        if (method, endpoint) == ("get", "/_api/collection"):
            return 200, {
                "error": False,
                "code": 200,
                "result": [
                    {"id": str(i), "name": name, "isSystem": False, "type": 2, "status": 3}
                    for i, name in enumerate(sorted(self.collections))
                ],
            }
        if (method, endpoint) == ("post", "/_api/collection"):
            self.collections.add(body["name"])
            return 200, {"id": "99", "name": body["name"], "type": 2, "isSystem": False, "status": 3}
        if (method, endpoint) == ("post", "/_api/index"):
            return 201, {
                **body,
                "id": f"{params['collection']}/7",
                "isNewlyCreated": True,
                "error": False,
                "code": 201,
            }
        if (method, endpoint) == ("post", "/_api/cursor"):
            return self._cursor(body)
        if (method, endpoint) == ("post", "/_api/transaction/begin"):
            return 201, {
                "error": False,
                "code": 201,
                "result": {"id": str(next(self.transaction_ids)), "status": "running"},
            }
        trx = re.fullmatch(r"/_api/transaction/(\d+)", endpoint)
        if trx and method in ("put", "delete"):
            status = "committed" if method == "put" else "aborted"
            return 200, {"error": False, "code": 200, "result": {"id": trx.group(1), "status": status}}
        raise AssertionError(f"unexpected request {method.upper()} {path}")

    def _system(self, method: str, endpoint: str, body: Any) -> tuple[int, Any]:
        if (method, endpoint) == ("post", "/_api/database"):
            if self.forbid_create_database:
                return 403, _error(403, 11, "forbidden")
            self.database_exists = True
            return 201, {"error": False, "code": 201, "result": True}
        if method == "delete" and endpoint == f"/_api/database/{DB}":
            return 200, {"error": False, "code": 200, "result": True}
        raise AssertionError(f"unexpected _system request {method.upper()} {endpoint}")

    def _cursor(self, body: dict[str, Any]) -> tuple[int, Any]:
        query, bind_vars = body["query"], body.get("bindVars", {})
        if any(fragment in query for fragment in self.cursor_failures):
            return 409, _error(409, 1210, "unique constraint violated")
        rows: list[Any] = []
        for fragment, answer in self.cursor_answers:
            if fragment in query:
                rows = answer(query, bind_vars) if callable(answer) else answer
                break
        return 201, {
            "error": False,
            "code": 201,
            "result": rows,
            "hasMore": False,
            "id": None,
            "count": len(rows),
            "cached": False,
            "extra": {"warnings": [], "stats": {}},
        }

    # ---- what tests look at --------------------------------------------------------------
    def cursors(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/_api/cursor")]

    def endpoints(self) -> list[str]:
        return [f"{r.method.upper()} {r.path}" for r in self.requests]

    def clear(self) -> None:
        self.requests.clear()


def _error(code: int, error_num: int, message: str) -> dict[str, Any]:
    return {"error": True, "code": code, "errorNum": error_num, "errorMessage": message}


@pytest.fixture
def fake() -> FakeArango:
    return FakeArango(collections={*COLLECTIONS, "nomarr_meta"})


@pytest.fixture
def store(fake: FakeArango) -> Iterator[ArangoStore]:
    engine = open_store(
        URL, arango_db=DB, arango_user="root", arango_password=PASSWORD, arango_http_client=fake
    )
    assert isinstance(engine, ArangoStore)
    engine._database()  # connect now, so tests see only the operation's own requests
    fake.clear()
    yield engine
    engine.close()


def _file(key: str, **fields: Any) -> dict[str, Any]:
    return {
        "_key": key,
        "library_id": "lib1",
        "path": f"/music/{key}.mp3",
        "size": 10,
        "mtime_ns": 100,
        **fields,
    }


def _tag(file_id: str, label: str, value: Any) -> dict[str, Any]:
    return {
        "_key": f"{file_id}|{HEAD.model_key}|{HEAD.head_name}|{label}",
        "file_id": file_id,
        "model_key": HEAD.model_key,
        "head_name": HEAD.head_name,
        "label": label,
        "value": value,
        "std": 0.01,
        "calibrated_value": None,
        "tagger_version": HEAD.tagger_version,
    }


# ---- opening: database, collections, indexes, schema version ----------------------------------
def test_constructing_sends_nothing_and_store_satisfies_protocol(fake: FakeArango) -> None:
    engine = ArangoStore(URL, database=DB, username="root", password=PASSWORD, http_client=fake)
    assert isinstance(engine, Store) and engine.engine == "arango"
    assert fake.requests == []


def test_first_use_creates_database_collections_indexes_and_schema_document() -> None:
    fake = FakeArango(database_exists=False, schema_version=None)
    engine = ArangoStore(URL, database=DB, password=PASSWORD, http_client=fake)
    engine.list_libraries()

    endpoints = fake.endpoints()
    assert endpoints[:4] == [
        f"GET /_db/{DB}/_api/version",
        "POST /_db/_system/_api/database",
        f"GET /_db/{DB}/_api/document/nomarr_meta/schema",
        f"GET /_db/{DB}/_api/collection",
    ]
    assert fake.requests[1].body["name"] == DB
    created = [
        r.body["name"] for r in fake.requests if r.method == "post" and r.path.endswith("/_api/collection")
    ]
    assert sorted(created) == sorted([*COLLECTIONS, "nomarr_meta"])
    assert all(
        r.body.get("type") == 2
        for r in fake.requests
        if r.method == "post" and r.path.endswith("/_api/collection")
    ), "document collections"

    sent_indexes = {
        r.body["name"]: (r.params["collection"], r.body)
        for r in fake.requests
        if r.path.endswith("/_api/index")
    }
    assert set(sent_indexes) == {index.name for index in (*INDEXES, *ANALYSIS_INDEXES)}
    collection, seed_index = sent_indexes["idx_file_tags_histogram"]
    assert collection == "file_tags"
    assert seed_index == {
        "type": "persistent",
        "name": "idx_file_tags_histogram",
        "fields": ["model_key", "head_name", "nomarr_only"],
        "unique": False,
        "sparse": False,
    }
    expected_fields = {
        "idx_file_tags_label_histogram": ("file_tags", ["model_key", "head_name", "label", "nomarr_only"]),
        "idx_file_tags_file": ("file_tags", ["file_id", "model_key", "head_name", "tagger_version"]),
        "idx_library_files_library_path": ("library_files", ["library_id", "path"]),
        "idx_library_files_calibration_hash": ("library_files", ["library_id", "calibration_hash"]),
        "idx_library_files_pending": ("library_files", ["library_id", "file_tags_pending"]),
        "idx_library_folders_library": ("library_folders", ["library_id"]),
        "idx_calibration_state_label": ("calibration_state", ["model_key", "head_name", "label"]),
        "idx_calibration_history_key": ("calibration_history", ["calibration_key", "snapshot_at"]),
        "idx_analysis_errors_file": ("analysis_errors", ["file_id", "model_key", "head_name"]),
        "idx_analysis_errors_head": ("analysis_errors", ["model_key", "head_name", "tagger_version"]),
        "idx_analysis_claims_shard": ("analysis_claims", ["run_id", "shard"]),
        "idx_analysis_claims_claimed_at": ("analysis_claims", ["claimed_at"]),
    }
    for name, (coll, fields) in expected_fields.items():
        assert sent_indexes[name][0] == coll
        assert sent_indexes[name][1]["fields"] == fields and sent_indexes[name][1]["type"] == "persistent"

    schema_write = next(r for r in fake.cursors() if "nomarr_meta" in r.query)
    assert "UPSERT" in schema_write.query
    assert schema_write.bind_vars == {"key": "schema", "version": SCHEMA_VERSION}
    # Indexes come after their collections exist, and the version is written last.
    for position, request in enumerate(fake.requests):
        if request.path.endswith("/_api/index"):
            created_at = next(i for i, r in enumerate(fake.requests) if r.path.endswith("/_api/collection")
                              and r.method == "post" and r.body["name"] == request.params["collection"])
            assert created_at < position < fake.requests.index(schema_write)


def test_a_version_1_database_gets_the_per_head_analysis_errors() -> None:
    fake = FakeArango(schema_version=1, collections={*COLLECTIONS, "nomarr_meta"} - {
        "analysis_errors", "analysis_claims"})
    ArangoStore(URL, database=DB, password=PASSWORD, http_client=fake).list_libraries()
    created = [r.body["name"] for r in fake.requests
               if r.method == "post" and r.path.endswith("/_api/collection")]
    assert created == ["analysis_errors", "analysis_claims"]
    indexes = [r.body["name"] for r in fake.requests if r.path.endswith("/_api/index")]
    assert indexes == [index.name for index in ANALYSIS_INDEXES]
    queries = [r.query for r in fake.cursors()]
    # old file-wide errors cleared once (a file without predictions is no longer analysed)
    assert queries[:2] == list(ANALYSIS_ERRORS_RESET)
    assert "FILTER d.analysis_error != null" in queries[0] and "analyzed_at: null" in queries[0]
    assert "file_tags_pending: false" in queries[0] and "t.file_id == d._key" in queries[0]
    assert "UPDATE d WITH {analysis_error: null}" in queries[1]
    assert fake.cursors()[2].bind_vars == {"key": "schema", "version": 2}


def test_existing_collections_are_not_recreated() -> None:
    fake = FakeArango(schema_version=None, collections={"libraries", "file_tags"})
    ArangoStore(URL, database=DB, password=PASSWORD, http_client=fake).list_libraries()
    created = {
        r.body["name"] for r in fake.requests if r.method == "post" and r.path.endswith("/_api/collection")
    }
    assert created == {*COLLECTIONS, "nomarr_meta"} - {"libraries", "file_tags"}


def test_current_schema_opens_with_two_requests_and_once_per_process(
    fake: FakeArango, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = ArangoStore(URL, database=DB, password=PASSWORD, http_client=fake)
    engine.list_libraries()
    engine.list_calibrations()
    assert fake.endpoints() == [
        f"GET /_db/{DB}/_api/version",
        f"GET /_db/{DB}/_api/document/nomarr_meta/schema",
        f"POST /_db/{DB}/_api/cursor",
        f"POST /_db/{DB}/_api/cursor",
    ]
    # A Dagster step runs in a new process: the client is opened again there.
    fake.clear()
    real_pid = arango_module.os.getpid()
    monkeypatch.setattr(arango_module.os, "getpid", lambda: real_pid + 1)
    engine.list_libraries()
    assert fake.endpoints()[:2] == [
        f"GET /_db/{DB}/_api/version",
        f"GET /_db/{DB}/_api/document/nomarr_meta/schema",
    ]


def test_newer_schema_is_refused() -> None:
    fake = FakeArango(schema_version=SCHEMA_VERSION + 1, collections={*COLLECTIONS})
    with pytest.raises(StoreError, match="newer"):
        ArangoStore(URL, database=DB, password=PASSWORD, http_client=fake).list_libraries()


def test_missing_database_without_permission_to_create_it() -> None:
    fake = FakeArango(database_exists=False, forbid_create_database=True)
    with pytest.raises(StoreError, match="does not exist") as err:
        ArangoStore(URL, database=DB, password=PASSWORD, http_client=fake).list_libraries()
    assert PASSWORD not in str(err.value)


def test_bad_credentials_name_the_url_but_never_the_password() -> None:
    fake = FakeArango(reject_auth=True)
    url_with_credentials = f"http://root:{PASSWORD}@arango.test:8529"
    engine = ArangoStore(url_with_credentials, database=DB, password=PASSWORD, http_client=fake)
    assert PASSWORD not in repr(engine)
    with pytest.raises(StoreError) as err:
        engine.list_libraries()
    message = str(err.value)
    assert "http://arango.test:8529" in message and "root" in message
    assert PASSWORD not in message
    # The password travels only as basic auth, never in a request line.
    assert all(PASSWORD not in r.path and PASSWORD not in json.dumps(r.params) for r in fake.requests)


def test_credentials_in_the_url_are_used_when_no_password_is_given() -> None:
    fake = FakeArango()
    engine = ArangoStore(
        f"http://root:{PASSWORD}@arango.test:8529", database=DB, password=None, http_client=fake
    )
    engine.list_libraries()  # FakeArango answers 401 unless auth == ("root", PASSWORD)
    assert all("@" not in r.path for r in fake.requests)


def test_user_in_the_url_is_used_when_no_user_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeArango(user="alice")
    engine = open_store("http://alice@arango.test:8529", arango_password=PASSWORD, arango_http_client=fake)
    engine.list_libraries()  # FakeArango answers 401 unless auth == ("alice", PASSWORD)

    # The same through the settings every caller reads (NOMARR_ARANGO_USER unset).
    monkeypatch.setenv("NOMARR_STORE_URL", "http://alice@arango.test:8529")
    monkeypatch.setenv("NOMARR_ARANGO_PASSWORD", PASSWORD)
    monkeypatch.delenv("NOMARR_ARANGO_USER", raising=False)
    settings = Settings.from_env()
    fake = FakeArango(user="alice")
    open_store(
        settings.store_url,
        arango_db=settings.arango_db,
        arango_user=settings.arango_user,
        arango_password=settings.arango_password,
        arango_http_client=fake,
    ).list_libraries()
    assert fake.requests and all(r.path.startswith("/_db/") for r in fake.requests)


def test_configured_user_wins_over_the_url_and_root_is_the_default() -> None:
    fake = FakeArango(user="bob")
    open_store(
        "http://alice@arango.test:8529", arango_user="bob", arango_password=PASSWORD, arango_http_client=fake
    ).list_libraries()
    fake = FakeArango(user="root")
    open_store(URL, arango_password=PASSWORD, arango_http_client=fake).list_libraries()


def test_connection_refused_fails_fast_with_redacted_url() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = open_store(
        f"http://alice:{PASSWORD}@127.0.0.1:{port}", arango_user="alice", arango_password=PASSWORD
    )
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        engine.list_libraries()
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message
    assert PASSWORD not in message and "alice:" not in message


# ---- calibration ---------------------------------------------------------------------------------
def test_histogram_is_one_grouped_query_and_maps_to_sparse_histogram(
    store: ArangoStore, fake: FakeArango
) -> None:
    fake.answer(
        "COLLECT bin_index",
        [
            {"bin_index": -1, "bin_count": 2},
            {"bin_index": 0, "bin_count": 5},
            {"bin_index": 3000, "bin_count": 1},
            {"bin_index": 9999, "bin_count": 4},
            {"bin_index": 10000, "bin_count": 3},
        ],
    )
    hist = label_histogram(store, HEAD.model_key, HEAD.head_name, "happy", 0.0, 1.0, 10_000)
    assert hist == SparseHistogram(bins=[(0, 5), (3000, 1), (9999, 4)], underflow_count=2, overflow_count=3)
    assert hist.n == 15

    (request,) = fake.requests
    assert request.method == "post" and request.path == f"/_db/{DB}/_api/cursor"
    aql = request.query
    assert "FOR ft IN file_tags" in aql
    assert "ft.model_key == @model_key AND ft.head_name == @head_name AND ft.label == @label" in aql
    assert "ft.nomarr_only == true" in aql and "IS_NUMBER(ft.value)" in aql
    assert "FLOOR((ft.value - @lo) * @bins / (@hi - @lo))" in aql
    assert "ft.value < @lo ? -1" in aql and "ft.value > @hi ? @bins" in aql
    assert re.search(r"COLLECT bin_index = bin_idx\s+AGGREGATE bin_count = COUNT\(1\)", aql)
    assert "SORT bin_index" in aql
    assert not re.search(r"\bINTO\b", aql), "COLLECT ... INTO holds whole groups in memory"
    assert request.bind_vars == {
        "model_key": HEAD.model_key,
        "head_name": HEAD.head_name,
        "label": "happy",
        "lo": 0.0,
        "hi": 1.0,
        "bins": 10_000,
    }
    assert request.body["options"]["failOnWarning"] is True


def test_histograms_is_one_grouped_query_per_label(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("COLLECT bin_index", [{"bin_index": 3, "bin_count": 2}])
    found = list(store.histograms(HEAD.model_key, HEAD.head_name, ["b", "a"], 0.0, 1.0, 10))
    assert [(label, hist.bins) for label, hist in found] == [("b", [(3, 2)]), ("a", [(3, 2)])]
    assert [r.bind_vars["label"] for r in fake.cursors()] == ["b", "a"]
    assert all("COLLECT bin_index = bin_idx AGGREGATE" in r.query for r in fake.cursors())


def test_histogram_of_nothing_and_bad_spec(store: ArangoStore, fake: FakeArango) -> None:
    assert label_histogram(store, "m", "h", "l", 0.0, 1.0, 10).n == 0
    fake.clear()
    with pytest.raises(ValueError):
        label_histogram(store, "m", "h", "l", 1.0, 1.0, 10)
    with pytest.raises(ValueError):
        label_histogram(store, "m", "h", "l", 0.0, 1.0, 0)
    assert fake.requests == []


def test_save_calibrations_is_one_transaction_with_encoded_keys(store: ArangoStore, fake: FakeArango) -> None:
    key = f"{HEAD.model_key}:genre:Folk, World, & Country"
    state = {
        "_key": key,
        "model_key": HEAD.model_key,
        "head_name": "genre",
        "label": "Folk, World, & Country",
        "p5": 0.1,
        "p95": 0.9,
        "histogram": {"lo": 0.0, "hi": 1.0, "bins": 10000, "bin_width": 0.0001},
    }
    history = [
        {"_key": f"{key}:{t}", "calibration_key": key, "snapshot_at": t, "p5": 0.1, "p5_delta": math.nan}
        for t in (1, 2)
    ]
    store.save_calibrations([state], history)

    assert fake.endpoints() == [
        f"POST /_db/{DB}/_api/transaction/begin",
        f"POST /_db/{DB}/_api/cursor",
        f"POST /_db/{DB}/_api/cursor",
        f"PUT /_db/{DB}/_api/transaction/1",
    ]
    begin, states_write, history_write, _ = fake.requests
    assert sorted(begin.body["collections"]["write"]) == ["calibration_history", "calibration_state"]
    assert all(r.headers.get("x-arango-trx-id") == "1" for r in (states_write, history_write))
    assert 'INSERT d INTO calibration_state OPTIONS {overwriteMode: "replace"}' in states_write.query
    (sent_state,) = states_write.bind_vars["docs"]
    assert sent_state["_key"] == encode_key(key) == f"{HEAD.model_key}:genre:Folk,%20World,%20%26%20Country"
    assert sent_state["label"] == "Folk, World, & Country"  # only the key is encoded
    assert "INTO calibration_history" in history_write.query
    assert [h["_key"] for h in history_write.bind_vars["docs"]] == [
        encode_key(f"{key}:1"),
        encode_key(f"{key}:2"),
    ]
    assert history_write.bind_vars["docs"][0]["p5_delta"] is None  # JSON has no NaN


def test_failed_statement_aborts_the_transaction(store: ArangoStore, fake: FakeArango) -> None:
    fake.fail("INTO calibration_history")
    with pytest.raises(Exception, match="unique constraint"):
        store.save_calibrations([{"_key": "m:h:l", "p5": 0.1}], [{"_key": "x", "calibration_key": "m:h:l"}])
    assert fake.endpoints()[-1] == f"DELETE /_db/{DB}/_api/transaction/1"
    assert not any(r.method == "put" for r in fake.requests), "never committed"


def test_calibration_reads_decode_keys_and_fill_fields(store: ArangoStore, fake: FakeArango) -> None:
    stored_key = encode_key("m:genre:Hip Hop")
    fake.answer(
        "FOR d IN calibration_state FILTER d._key IN @keys",
        [{"_key": stored_key, "model_key": "m", "head_name": "genre", "label": "Hip Hop", "p5": 0, "p95": 1}],
    )
    got = store.get_calibrations(["m:genre:Hip Hop", "m:genre:Jazz"]).get("m:genre:Hip Hop")
    assert fake.requests[0].bind_vars == {"keys": ["m:genre:Hip%20Hop", "m:genre:Jazz"]}
    assert "_id" in fake.requests[0].query and "UNSET" in fake.requests[0].query
    assert got is not None and got["_key"] == "m:genre:Hip Hop"
    assert got["p5"] == 0.0 and isinstance(got["p5"], float) and isinstance(got["p95"], float)
    assert got["calibration_def_hash"] is None  # declared but never set

    fake.answer("FOR d IN calibration_state RETURN", [{"_key": "m:h:b"}, {"_key": encode_key("m:h:A c")}])
    assert [c["_key"] for c in store.list_calibrations()] == ["m:h:A c", "m:h:b"]


def test_recent_history_of_a_head_is_one_query_limited_per_key(store: ArangoStore, fake: FakeArango) -> None:
    keys = [f"m:genre:label {i}" for i in range(400)]
    fake.answer(
        "FOR d IN calibration_history",
        [
            {"_key": encode_key("h@20"), "calibration_key": keys[0], "snapshot_at": 20, "p5": 0},
            {"_key": "h2", "calibration_key": keys[0], "snapshot_at": 10},
            {"_key": "h3", "calibration_key": keys[7], "snapshot_at": 5},
        ],
    )
    recent = store.recent_history(keys, per_key=2)
    (request,) = fake.requests  # one request for 400 labels
    assert request.bind_vars == {"calibration_keys": keys, "per_key": 2}
    # LIMIT inside a subquery per key: a LIMIT in a nested FOR would cap all keys together.
    assert re.search(
        r"FOR key IN @calibration_keys LET recent = \(FOR d IN calibration_history "
        r"FILTER d\.calibration_key == key SORT d\.snapshot_at DESC, d\._key DESC LIMIT @per_key RETURN",
        request.query,
    ), request.query
    assert {key: [h["_key"] for h in found] for key, found in recent.items()} == {
        keys[0]: ["h@20", "h2"],
        keys[7]: ["h3"],
    }
    first = recent[keys[0]][0]
    assert first["p5"] == 0.0 and isinstance(first["p5"], float) and first["p5_delta"] is None


def test_labels_of_head_sorted_like_sqlite(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("COLLECT label = d.label", ["happy", "Happy", "aggressive"])
    assert store.labels_of_head("m", "h") == ["Happy", "aggressive", "happy"]
    assert fake.requests[0].bind_vars == {"model_key": "m", "head_name": "h"}


# ---- recalibration ---------------------------------------------------------------------------------
def test_calibrated_values_are_one_set_based_statement(store: ArangoStore, fake: FakeArango) -> None:
    ids = [f"f{i:03d}" for i in range(500)]
    fake.answer("d.calibration_hash == @claim RETURN d._key", ids)
    store.finish_claimed_recalibration("claim:1", "H", dict.fromkeys(ids))
    request = fake.requests[2]
    aql = request.query
    assert request.bind_vars == {"file_ids": ids}
    assert "FOR ft IN file_tags" in aql and "FILTER ft.file_id IN @file_ids" in aql
    assert "c.model_key == ft.model_key AND c.head_name == ft.head_name AND c.label == ft.label" in aql
    assert "cal.p95 > cal.p5" in aql and "IS_NUMBER(cal.p5)" in aql and "IS_NUMBER(ft.value)" in aql
    assert "LET span = usable ? cal.p95 - cal.p5 : 1" in aql, "never a division by zero"
    assert "MIN([MAX([(value - p5) / span, 0]), 1])" in aql
    assert ": null" in aql and "UPDATE ft WITH" in aql and "keepNull: true" in aql




def test_recalibration_counts_and_pages(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("COLLECT WITH COUNT INTO files", [7])
    assert store.count_files_needing_recalibration("H", "lib1") == 7
    request = fake.requests[-1]
    assert request.bind_vars == {"expected_hash": "H", "library_id": "lib1"}
    assert "d.analyzed_at != null AND d.calibration_hash != @expected_hash" in request.query
    assert store.count_files_needing_recalibration("H") == 7
    assert fake.requests[-1].bind_vars == {"expected_hash": "H"}


def test_claim_marks_and_returns_mismatching_files_in_one_statement(
    store: ArangoStore, fake: FakeArango
) -> None:
    fake.answer("RETURN NEW._key", ["b", "a"])
    assert store.claim_files_for_recalibration("H", "run:", "run:1", 2, "lib1") == ["a", "b"]
    (request,) = fake.requests
    assert request.bind_vars == {
        "expected_hash": "H", "library_id": "lib1", "run": "run:", "claim": "run:1", "limit": 2}  # fmt: skip
    assert "LEFT(d.calibration_hash, LENGTH(@run)) != @run" in request.query
    assert "UPDATE d WITH {calibration_hash: @claim} IN library_files" in request.query




def test_tier_inputs_compute_calibration_like_apply_without_writing(
    store: ArangoStore, fake: FakeArango
) -> None:
    fake.answer("RETURN [ft.file_id", [["f1", "h", "happy", 0.1, 1]])
    ids = [f"f{i}" for i in range(arango_module.WRITE_CHUNK_SIZE + 1)]
    rows = store.tier_inputs(ids)
    assert rows == [("f1", "h", "happy", 0.1, 1.0)] * 2 and isinstance(rows[0][4], float)
    first, second = fake.requests
    assert [len(r.bind_vars["file_ids"]) for r in (first, second)] == [len(ids) - 1, 1]
    apply_part = arango_module.APPLY_CALIBRATION_AQL.split("\n  UPDATE")[0]
    assert first.query.startswith(apply_part), "the same calibration expression as a finished recalibration"
    assert "UPDATE" not in first.query and "ft.head_name, ft.label, ft.std, calibrated]" in first.query


def test_finish_claimed_is_one_transaction_over_files_still_claimed(
    store: ArangoStore, fake: FakeArango
) -> None:
    fake.answer("d.calibration_hash == @claim RETURN d._key", ["f1"])  # f2 got new predictions
    tiers = {"mood-strict": [], "mood-regular": ["happy"], "mood-loose": ["happy"]}
    assert store.finish_claimed_recalibration("claim:1", "H", {"f1": tiers, "f2": tiers}) == ["f1"]
    begin, held, apply, finish, commit = fake.requests
    assert begin.path.endswith("/_api/transaction/begin")
    assert sorted(begin.body["collections"]["write"]) == ["file_tags", "library_files"]
    assert held.bind_vars == {"file_ids": ["f1", "f2"], "claim": "claim:1"}
    assert "calibrated_value: calibrated" in apply.query and apply.bind_vars == {"file_ids": ["f1"]}
    assert "UPDATE d WITH UNSET(row" in finish.query
    assert [(r["_key"], r["calibration_hash"], r["file_tags_pending"]) for r in finish.bind_vars["rows"]] == [
        ("f1", "H", True)]  # fmt: skip
    assert finish.bind_vars["rows"][0]["mood_tiers"]["mood-loose"] == ["happy"]
    assert all(r.headers.get("x-arango-trx-id") == "1" for r in (held, apply, finish))
    assert commit.method == "put" and commit.path.endswith("/_api/transaction/1")


def test_finish_claimed_aborts_when_a_statement_fails(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("d.calibration_hash == @claim RETURN d._key", ["f1"])
    fake.fail("UPDATE d WITH UNSET(row")
    with pytest.raises(Exception, match="unique constraint"):
        store.finish_claimed_recalibration("claim:1", "H", {"f1": None})
    assert fake.endpoints()[-1] == f"DELETE /_db/{DB}/_api/transaction/1"
    assert not any(r.method == "put" for r in fake.requests), "never committed"


def test_reset_calibration_hashes_counts_reset_files(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("RETURN LENGTH(reset)", [3])
    assert store.reset_calibration_hashes("lib1") == 3
    assert fake.requests[-1].bind_vars == {"library_id": "lib1"}
    assert "d.calibration_hash != null" in fake.requests[-1].query
    store.reset_calibration_hashes()
    assert fake.requests[-1].bind_vars == {}


# ---- analysis ----------------------------------------------------------------------------------------
def test_write_predictions_replaces_groups_in_one_transaction(store: ArangoStore, fake: FakeArango) -> None:
    def run(files: int) -> list[Recorded]:
        fake.clear()
        tags = [_tag(f"f{i}", label, 0.5) for i in range(files) for label in ("happy", "non happy")]
        store.write_predictions(tags)
        return list(fake.requests)

    few, many = run(3), run(1000)
    assert len(few) == len(many) == 6, "batched: the request count does not grow with files"
    begin, remove, remove_errors, insert, clear_hash, commit = many
    assert begin.path.endswith("/_api/transaction/begin")
    assert sorted(begin.body["collections"]["write"]) == ["analysis_errors", "file_tags", "library_files"]
    assert commit.method == "put" and re.search(r"/_api/transaction/\d+$", commit.path)
    assert all(
        r.headers.get("x-arango-trx-id") == commit.path.rsplit("/", 1)[1]
        for r in (remove, remove_errors, insert, clear_hash)
    )
    assert len(remove_errors.bind_vars["keys"]) == 1000

    assert "FOR g IN @groups FOR d IN file_tags" in remove.query and "REMOVE d IN file_tags" in remove.query
    assert len(remove.bind_vars["groups"]) == 1000
    assert remove.bind_vars["groups"][0] == ["f0", HEAD.model_key, HEAD.head_name]
    assert 'INSERT d INTO file_tags OPTIONS {overwriteMode: "replace"}' in insert.query
    sent = insert.bind_vars["docs"]
    assert len(sent) == 2000
    assert sent[1]["_key"] == f"f0%7C{HEAD.model_key}%7C{HEAD.head_name}%7Cnon%20happy"
    assert sent[1]["label"] == "non happy" and sent[1]["nomarr_only"] is True
    assert "UPDATE d WITH {calibration_hash: null}" in clear_hash.query
    assert clear_hash.bind_vars == {"file_ids": [f"f{i}" for i in sorted(range(1000), key=lambda i: f"f{i}")]}


def test_write_predictions_sends_non_finite_values_as_null(store: ArangoStore, fake: FakeArango) -> None:
    store.write_predictions([_tag("a", "x", math.nan), _tag("a", "y", math.inf), _tag("a", "z", 0.25)])
    insert = next(r for r in fake.cursors() if "INSERT d INTO file_tags" in r.query)
    assert [d["value"] for d in insert.bind_vars["docs"]] == [None, None, 0.25]


def test_write_predictions_needs_keys(store: ArangoStore, fake: FakeArango) -> None:
    tag = _tag("a", "x", 0.1)
    del tag["_key"]
    with pytest.raises(ValueError):
        store.write_predictions([tag])
    assert fake.requests == []


def test_claims_take_files_that_need_a_head_in_an_exclusive_transaction(
    store: ArangoStore, fake: FakeArango
) -> None:
    other = HeadVersion(HEAD.model_key, "danceability", "tv1")
    fake.answer("LIMIT @limit", [{"doc": {"_key": "b", "library_id": "lib1"}, "heads": [1]},
                                 {"doc": {"_key": "c", "library_id": "lib1"}, "heads": [0, 1]}])
    claimed = store.claim_files_for_analysis([HEAD, other], AnalysisClaim("run-1", 3), 10, after_key="a")
    assert [(c.doc["_key"], c.heads) for c in claimed] == [("b", (other,)), ("c", (HEAD, other))]
    assert claimed[0].doc["file_tags_pending"] is False and claimed[0].doc["analyzed_at"] is None
    begin, select, insert, commit = fake.requests
    assert begin.body["collections"] == {"write": ["analysis_claims"], "exclusive": ["analysis_claims"]}
    assert select.bind_vars == {"heads": [[HEAD.model_key, "mood_happy", "tv1"], [HEAD.model_key,
                                "danceability", "tv1"]], "run_id": "run-1", "after_key": "a", "limit": 10}
    aql = select.query
    assert "d._key > @after_key AND d.scan_error == null AND d.analysis_error == null" in aql
    assert "DOCUMENT('analysis_claims', SHA1(CONCAT(@run_id, '|', d._key))) == null" in aql
    assert "FOR i IN 0..LENGTH(heads) - 1" in aql and "FILTER LENGTH(needed) > 0" in aql
    assert "t.file_id == d._key AND t.model_key == heads[i][0]" in aql
    assert "t.tagger_version == heads[i][2]" in aql
    # a failure is found by its key, which the engines compute alike
    assert "DOCUMENT('analysis_errors', SHA1(CONCAT(d._key, '|', heads[i][0], '|', heads[i][1])))" in aql
    assert ".tagger_version != heads[i][2]" in aql
    assert "SORT d._key LIMIT @limit" in aql
    assert "INTO analysis_claims" in insert.query and "SHA1(CONCAT(@run_id, '|', file_id))" in insert.query
    assert insert.bind_vars == {"file_ids": ["b", "c"], "run_id": "run-1", "shard": 3}
    assert all(r.headers.get("x-arango-trx-id") == "1" for r in (select, insert))
    assert commit.method == "put"


def test_reclaim_release_count_and_errors(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("FOR c IN analysis_claims FILTER c.run_id == @run_id AND c.shard == @shard",
                [{"doc": {"_key": "b"}, "heads": [0]}])
    (again,) = store.reclaim_files_for_analysis([HEAD], AnalysisClaim("run-1", 2))
    assert again.doc["_key"] == "b" and again.heads == (HEAD,)
    request = fake.requests[-1]
    assert request.bind_vars == {"heads": [[HEAD.model_key, "mood_happy", "tv1"]], "run_id": "run-1",
                                 "shard": 2}
    assert "FOR d IN library_files FILTER d._key == c.file_id" in request.query

    fake.answer("REMOVE c IN analysis_claims", [4])
    assert store.release_analysis_claims("run-1", 1234) == 4
    assert "c.run_id == @run_id OR c.claimed_at < @before" in fake.requests[-1].query
    assert fake.requests[-1].bind_vars == {"run_id": "run-1", "before": 1234}

    fake.answer("COLLECT WITH COUNT INTO files", [2])
    assert store.count_files_needing_analysis(HEAD) == 2
    assert fake.requests[-1].bind_vars == {"heads": [[HEAD.model_key, "mood_happy", "tv1"]]}
    assert "heads[0][2]" in fake.requests[-1].query

    store.record_analysis_errors([{"file_id": "b", "model_key": HEAD.model_key, "head_name": "mood_happy",
                                   "tagger_version": "tv1", "error": "bad", "failed_at": 5}])
    request = fake.requests[-1]
    assert 'INSERT d INTO analysis_errors OPTIONS {overwriteMode: "replace"}' in request.query
    (doc,) = request.bind_vars["docs"]
    assert doc["_key"] == analysis_error_key("b", HEAD.model_key, "mood_happy") and doc["error"] == "bad"

    fake.answer("FOR h IN @heads FOR e IN analysis_errors", [1])
    assert store.count_files_with_analysis_errors([HEAD], "lib1") == 1
    request = fake.requests[-1]
    assert "DOCUMENT('library_files', e.file_id).library_id == @library_id" in request.query
    assert "COLLECT file_id = e.file_id" in request.query

    fake.answer("FOR d IN analysis_errors FILTER d.model_key == h[0]", [{
        "_key": "k1", "file_id": "b", "model_key": HEAD.model_key, "head_name": "mood_happy",
        "tagger_version": "tv1", "error": "bad", "failed_at": 5, "model_fault": "it outputs NaN"}])
    (error,) = store.errors_of_unproven_heads([HEAD])
    assert error["model_fault"] == "it outputs NaN" and error["file_id"] == "b"
    request = fake.requests[-1]
    assert request.bind_vars == {"heads": [[HEAD.model_key, "mood_happy", "tv1"]]}
    assert "FOR t IN file_tags" in request.query and "== 0" in request.query


def test_predictions_remove_their_heads_failures(store: ArangoStore, fake: FakeArango) -> None:
    store.write_predictions([_tag("a", "happy", 0.5)])
    begin = fake.requests[0]
    assert sorted(begin.body["collections"]["write"]) == ["analysis_errors", "file_tags", "library_files"]
    remove = next(r for r in fake.cursors() if "IN analysis_errors" in r.query)
    assert "REMOVE key IN analysis_errors OPTIONS {ignoreErrors: true}" in remove.query
    assert remove.bind_vars == {"keys": [analysis_error_key("a", HEAD.model_key, HEAD.head_name)]}


def test_record_analysis_and_writes_are_single_statements(store: ArangoStore, fake: FakeArango) -> None:
    store.record_analysis([{"_key": f"f{i}", "analyzed_at": 5, "analysis_error": None} for i in range(800)])
    store.record_writes([{"_key": "a", "written_at": 9, "write_error": None, "file_tags_pending": False}])
    analysis, writes = fake.requests
    assert len(analysis.bind_vars["rows"]) == 800 and analysis.bind_vars["rows"][0]["analysis_error"] is None
    assert "keepNull: true" in analysis.query, "a null clears the field instead of being dropped"
    assert writes.bind_vars == {
        "rows": [{"_key": "a", "written_at": 9, "write_error": None, "file_tags_pending": False}]
    }


def test_a_guarded_write_record_clears_pending_only_for_an_unchanged_hash(
    store: ArangoStore, fake: FakeArango
) -> None:
    store.record_writes(
        [{"_key": "a", "written_at": 9, "file_tags_pending": False, "written_for_hash": "h1"},
         {"_key": "b", "written_at": None, "write_error": "denied", "file_tags_pending": True}]
    )
    fields, guard = [r for r in fake.requests if r.bind_vars.get("rows")]
    assert fields.bind_vars == {
        "rows": [{"_key": "a", "written_at": 9},
                 {"_key": "b", "written_at": None, "write_error": "denied", "file_tags_pending": True}]
    }
    assert "d.calibration_hash == row.hash" in guard.query
    assert "UPDATE d WITH {file_tags_pending: false}" in guard.query
    assert guard.bind_vars == {"rows": [{"_key": "a", "hash": "h1"}]}


def test_file_tags_for_files_sorted_with_original_keys(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer(
        "FILTER d.file_id IN @file_ids RETURN",
        [
            {
                "_key": "b%7Cm%7Ch%7Cx",
                "file_id": "b",
                "model_key": "m",
                "head_name": "h",
                "label": "x",
                "value": 1,
            },
            {
                "_key": "a%7Cm%7Ch%7Cy",
                "file_id": "a",
                "model_key": "m",
                "head_name": "h",
                "label": "y",
                "value": 0.5,
            },
        ],
    )
    tags = store.file_tags_for_files(["a", "b"])
    assert [t["_key"] for t in tags] == ["a|m|h|y", "b|m|h|x"]
    assert tags[1]["value"] == 1.0 and isinstance(tags[1]["value"], float)
    assert tags[0]["nomarr_only"] is True and tags[0]["calibrated_value"] is None
    assert fake.requests[0].bind_vars == {"file_ids": ["a", "b"]}
    fake.clear()
    assert store.file_tags_for_files([]) == [] and fake.requests == []




# ---- scanning -----------------------------------------------------------------------------------------
def test_upsert_files_is_batched_and_updates_only_given_fields(store: ArangoStore, fake: FakeArango) -> None:
    docs = [_file(f"{i:024x}", file_tags_pending=0) for i in range(1000)]
    store.upsert_files(docs)
    (request,) = fake.requests
    assert request.path == f"/_db/{DB}/_api/cursor"
    assert "FOR d IN @docs INSERT d INTO library_files" in request.query
    assert 'overwriteMode: "update"' in request.query and "mergeObjects: false" in request.query
    assert len(request.bind_vars["docs"]) == 1000
    assert request.bind_vars["docs"][0]["file_tags_pending"] is False

    fake.clear()
    store.upsert_files([_file(f"{i:024x}") for i in range(arango_module.WRITE_CHUNK_SIZE * 2 + 10)])
    assert len(fake.requests) == 3


def test_invalid_file_keys_are_refused_before_any_request(store: ArangoStore, fake: FakeArango) -> None:
    with pytest.raises(StoreError, match="not a valid ArangoDB document key"):
        store.upsert_files([_file("has space")])
    assert fake.requests == []


def test_file_index_maps_to_file_stats(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer(
        "RETURN [d.path, d._key, d.size, d.mtime_ns, d.written_stats]",
        [["/m/a.mp3", "a", 20, 100, [[30, 200]]], ["/m/b.mp3", "b", None, None, None]],
    )
    assert store.file_index("lib1") == {
        "/m/a.mp3": {"_key": "a", "size": 20, "mtime_ns": 100, "written_stats": [[30, 200]]},
        "/m/b.mp3": {"_key": "b", "size": None, "mtime_ns": None, "written_stats": None},
    }
    assert fake.requests[0].bind_vars == {"library_id": "lib1"}


def test_written_stats_are_appended_in_the_statement_that_reads_them(
    store: ArangoStore, fake: FakeArango
) -> None:
    store.add_written_stats(
        [{"_key": "a", "size": 12, "mtime_ns": 300}, {"_key": "b", "size": 5, "mtime_ns": 6}]
    )
    (request,) = fake.requests
    assert (
        "UPDATE d WITH {written_stats: PUSH(d.written_stats || [], row.stat)} IN library_files"
        in request.query
    )
    assert request.bind_vars == {"rows": [{"_key": "a", "stat": [12, 300]}, {"_key": "b", "stat": [5, 6]}]}


def test_folder_cache_is_replaced_in_one_transaction(store: ArangoStore, fake: FakeArango) -> None:
    store.save_folder_cache("lib1", {f"/music/{i}": (i, i + 1) for i in range(2000)})
    begin, remove, insert, commit = fake.requests
    assert begin.body["collections"]["write"] == ["library_folders"]
    assert "REMOVE d IN library_folders" in remove.query and remove.bind_vars == {"library_id": "lib1"}
    assert "INTO library_folders" in insert.query
    assert insert.bind_vars["library_id"] == "lib1" and len(insert.bind_vars["folders"]) == 2000
    assert insert.bind_vars["folders"][3] == ["/music/3", 3, 4]
    assert commit.method == "put"

    fake.answer("RETURN [d.path, d.mtime_ns, d.entry_count]", [["/music", 5, 6]])
    assert store.load_folder_cache("lib1") == {"/music": (5, 6)}


def test_delete_files_removes_tags_and_files_together(store: ArangoStore, fake: FakeArango) -> None:
    store.delete_files(["a", "b"])
    begin, tags, errors, files, commit = fake.requests
    assert sorted(begin.body["collections"]["write"]) == ["analysis_errors", "file_tags", "library_files"]
    assert "REMOVE d IN file_tags" in tags.query and tags.bind_vars == {"file_ids": ["a", "b"]}
    assert "REMOVE d IN analysis_errors" in errors.query and errors.bind_vars == {"file_ids": ["a", "b"]}
    assert "REMOVE d IN library_files" in files.query and files.bind_vars == {"file_ids": ["a", "b"]}
    assert commit.method == "put"
    fake.clear()
    store.delete_file_tags(["a"])
    begin, tags, errors, commit = fake.requests
    assert sorted(begin.body["collections"]["write"]) == ["analysis_errors", "file_tags"]
    assert "REMOVE d IN file_tags" in tags.query and "REMOVE d IN analysis_errors" in errors.query




def test_count_documents_is_one_statement_on_a_known_collection(
    store: ArangoStore, fake: FakeArango
) -> None:
    fake.answer("RETURN LENGTH(file_tags)", [42])
    assert store.count_documents("file_tags") == 42
    assert [r.query for r in fake.cursors()] == ["RETURN LENGTH(file_tags)"]
    with pytest.raises(ValueError, match="not a document collection"):
        store.count_documents("file_tags) RETURN 1 //")
    assert len(fake.requests) == 1


def test_iter_documents_pages_by_stored_key_and_decodes_keys(store: ArangoStore, fake: FakeArango) -> None:
    stored = [encode_key(k) for k in ("m:h:Hip Hop", "m:h:Rock", "m:h:Soul")]

    def page(query: str, bind_vars: dict[str, Any]) -> list[Any]:
        after = bind_vars["after_key"]
        return [{"_key": k, "calibration_key": "c", "p5": 0} for k in stored if k > after][
            : bind_vars["limit"]
        ]

    fake.answer("FOR d IN calibration_state FILTER d._key > @after_key", page)
    pages = list(store.iter_documents("calibration_state", batch_size=2))
    assert [[d["_key"] for d in p] for p in pages] == [["m:h:Hip Hop", "m:h:Rock"], ["m:h:Soul"]]
    assert [r.bind_vars["after_key"] for r in fake.cursors()] == ["", stored[1], stored[2]]
    assert pages[0][0]["p5"] == 0.0 and pages[0][0]["p95"] is None  # floats and declared fields


def test_put_documents_replaces_whole_documents_in_one_statement(
    store: ArangoStore, fake: FakeArango
) -> None:
    store.put_documents("file_tags", [_tag("a", "Hip Hop", math.nan), _tag("b", "happy", 0.5)])
    (request,) = fake.requests
    assert 'INSERT d INTO file_tags OPTIONS {overwriteMode: "replace"}' in request.query
    sent = request.bind_vars["docs"]
    assert [d["_key"] for d in sent] == [
        encode_key(f"a|{HEAD.model_key}|{HEAD.head_name}|Hip Hop"),
        encode_key(f"b|{HEAD.model_key}|{HEAD.head_name}|happy"),
    ]
    assert sent[0]["value"] is None and sent[0]["nomarr_only"] is True
    assert "library_files" not in request.query  # no hash clearing, unlike write_predictions


def test_file_counts_map_to_the_protocol_shape(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer(
        "COLLECT AGGREGATE total",
        [
            {
                "total": 6,
                "analysed": 1,
                "analysis_errors": 1,
                "scan_errors": 1,
                "pending_writes": 1,
                "write_errors": 1,
                "written": None,
            }
        ],
    )
    assert store.file_counts("lib1") == {
        "total": 6,
        "analysed": 1,
        "analysis_errors": 1,
        "scan_errors": 1,
        "pending_writes": 1,
        "write_errors": 1,
        "written": 0,
    }
    assert fake.requests[0].bind_vars == {"library_id": "lib1"}
    assert "d.analyzed_at != null AND d.analysis_error == null" in fake.requests[0].query
    fake.cursor_answers.clear()
    assert store.file_counts()["total"] == 0


def test_get_files_fills_declared_fields(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("FILTER d._key IN @file_ids", [{"_key": "b", "size": 1}, {"_key": "a", "duration_s": 3}])
    a, b = store.get_files(["a", "b"])
    assert a["_key"] == "a" and a["duration_s"] == 3.0 and isinstance(a["duration_s"], float)
    assert a["file_tags_pending"] is False and a["mood_tiers"] is None and "_id" not in a
    assert b["size"] == 1


def test_files_pending_write(store: ArangoStore, fake: FakeArango) -> None:
    store.files_pending_write("lib1", "a", 50)
    (request,) = fake.requests
    assert "d.file_tags_pending == true" in request.query and "SORT d._key LIMIT @limit" in request.query
    assert request.bind_vars == {"library_id": "lib1", "after_key": "a", "limit": 50}


# ---- libraries --------------------------------------------------------------------------------------------
def test_ensure_library_never_overwrites_and_returns_the_stored_one(
    store: ArangoStore, fake: FakeArango
) -> None:
    stored = {"_key": "lib1", "name": "Music", "file_write_mode": "minimal", "auto_write_tags": True}
    fake.answer("FOR d IN libraries FILTER d._key == @key", [stored])
    got = store.ensure_library(
        {"_key": "lib1", "name": "Other", "file_write_mode": "full", "auto_write_tags": 0}
    )
    assert got["file_write_mode"] == "minimal" and got["name"] == "Music" and got["root_path"] is None
    insert, read = fake.requests
    assert 'INSERT @doc INTO libraries OPTIONS {overwriteMode: "ignore"}' in insert.query
    assert insert.bind_vars["doc"]["auto_write_tags"] is False
    assert read.bind_vars == {"key": "lib1"}


def test_update_and_list_libraries(store: ArangoStore, fake: FakeArango) -> None:
    store.update_library("lib1", {"file_write_mode": "none"})
    assert fake.requests[0].bind_vars == {"rows": [{"file_write_mode": "none", "_key": "lib1"}]}
    fake.answer("FOR d IN libraries RETURN", [{"_key": "b"}, {"_key": "a"}])
    assert [lib["_key"] for lib in store.list_libraries()] == ["a", "b"]
    assert store.get_library("missing") is None


# ---- every statement: bind variables only -----------------------------------------------------------------
LITERALS = {
    "model": "LITmodelQ7",
    "head": "LIThead_Z3",
    "label": "LIT label, & more",
    "library": "LITlib9",
    "file": "LITfile4",
    "hash": "LIThashX1",
    "run": "LITrunP5",
    "claim": "LITrunP5claimK8",
    "path": "/LITpath/x.mp3",
}
NUMBERS = (0.123456789, 987654321, 4242)


def _exercise_every_operation(store: ArangoStore, fake: FakeArango) -> None:
    fake.answer("FOR d IN libraries FILTER d._key == @key", [{"_key": LITERALS["library"]}])
    m, h, lbl, lib, f = (LITERALS[k] for k in ("model", "head", "label", "library", "file"))
    head = HeadVersion(m, h, "LITtagger")
    store.ensure_library({"_key": lib, "name": "LITname", "root_path": "/LITroot"})
    store.get_library(lib)
    store.list_libraries()
    store.update_library(lib, {"file_write_mode": "LITmode"})
    store.load_folder_cache(lib)
    store.save_folder_cache(lib, {LITERALS["path"]: (987654321, 4242)})
    store.file_index(lib)
    store.upsert_files([{"_key": f, "library_id": lib, "path": LITERALS["path"], "size": 987654321}])
    store.delete_files([f])
    store.delete_file_tags([f])
    store.get_files([f])
    store.file_counts(lib)
    store.count_files_needing_analysis(head)
    store.claim_files_for_analysis([head], AnalysisClaim(LITERALS["run"], 4242), 4242, after_key=f)
    store.reclaim_files_for_analysis([head], AnalysisClaim(LITERALS["run"], 4242))
    store.release_analysis_claims(LITERALS["run"], 987654321)
    error = {"file_id": f, "model_key": m, "head_name": h, "tagger_version": "LITtagger"}
    store.record_analysis_errors([{**error,
                                   "error": "LITerror", "failed_at": 987654321}])
    store.count_files_with_analysis_errors([head], lib)
    store.errors_of_unproven_heads([head])
    store.write_predictions(
        [
            {
                "_key": f"{f}|{m}|{h}|{lbl}",
                "file_id": f,
                "model_key": m,
                "head_name": h,
                "label": lbl,
                "value": 0.123456789,
                "tagger_version": "LITtagger",
            }
        ]
    )
    store.record_analysis([{"_key": f, "analyzed_at": 987654321, "analysis_error": "LITerror"}])
    store.file_tags_for_files([f])
    label_histogram(store, m, h, lbl, 0.123456789, 4242.0, 4242)
    store.labels_of_head(m, h)
    store.get_calibrations([f"{m}:{h}:{lbl}"])
    store.list_calibrations()
    store.save_calibrations(
        [{"_key": f"{m}:{h}:{lbl}", "model_key": m, "head_name": h, "label": lbl, "p5": 0.123456789}],
        [{"_key": "LIThist", "calibration_key": f"{m}:{h}:{lbl}", "snapshot_at": 987654321}],
    )
    store.recent_history([f"{m}:{h}:{lbl}"], per_key=4242)
    store.count_files_needing_recalibration(LITERALS["hash"], lib)
    store.claim_files_for_recalibration(LITERALS["hash"], LITERALS["run"], LITERALS["claim"], 4242, lib)
    store.tier_inputs([f])
    store.finish_claimed_recalibration(LITERALS["claim"], LITERALS["hash"], {f: None})
    store.reset_calibration_hashes(lib)
    store.files_pending_write(lib, f, 4242)
    store.record_writes([{"_key": f, "written_at": 987654321, "write_error": "LITerror"}])
    store.count_documents("file_tags")
    list(store.iter_documents("calibration_history", batch_size=4242))
    store.put_documents("library_files", [{"_key": f, "library_id": lib, "size": 987654321}])


def test_no_value_is_ever_inlined_in_aql(store: ArangoStore, fake: FakeArango) -> None:
    _exercise_every_operation(store, fake)
    queries = [r.query for r in fake.cursors()]
    assert len(queries) >= 35
    for query in queries:
        for literal in (*LITERALS.values(), "LITtagger", "LITname", "LITerror", "LIThist", "LITmode"):
            assert literal not in query, f"{literal!r} inlined in: {query}"
        for number in NUMBERS:
            assert str(number) not in query, f"{number} inlined in: {query}"
    # The literals did reach the server, as bind variables.
    sent = json.dumps([r.bind_vars for r in fake.cursors()])
    assert all(literal in sent for literal in (LITERALS["model"], LITERALS["label"], LITERALS["hash"]))


def test_every_bind_variable_is_declared_and_used(store: ArangoStore, fake: FakeArango) -> None:
    """ArangoDB rejects a query whose bind variables and @placeholders differ (errors 1551/1552)."""
    _exercise_every_operation(store, fake)
    for request in fake.cursors():
        placeholders = set(re.findall(r"(?<![@\w])@(\w+)", request.query))
        assert placeholders == set(request.bind_vars), request.query
        assert "@@" not in request.query
        assert request.query.count("(") == request.query.count(")"), request.query
        assert request.query.count("{") == request.query.count("}"), request.query
        assert request.query.count("[") == request.query.count("]"), request.query


def test_every_write_sends_o1_requests(store: ArangoStore, fake: FakeArango) -> None:
    """Per-file loops would make request counts grow with the batch; they must not."""

    def requests_for(n: int) -> list[int]:
        ids = [f"{i:024x}" for i in range(n)]
        counts = []
        for operation in (
            lambda: store.upsert_files([_file(i) for i in ids]),
            lambda: store.record_analysis(
                [{"_key": i, "analyzed_at": 1, "analysis_error": None} for i in ids]
            ),
            lambda: store.write_predictions([_tag(i, "happy", 0.5) for i in ids]),
            lambda: store.record_writes([{"_key": i, "written_at": 1} for i in ids]),
            lambda: store.delete_file_tags(ids),
            lambda: store.delete_files(ids),
            lambda: store.record_analysis_errors(
                [{"file_id": i, "model_key": "m", "head_name": "h", "tagger_version": "v"} for i in ids]),
            lambda: store.get_files(ids),
            lambda: store.file_tags_for_files(ids),
            lambda: store.put_documents("file_tags", [_tag(i, "happy", 0.5) for i in ids]),
        ):
            fake.clear()
            operation()
            counts.append(len(fake.requests))
        return counts

    assert requests_for(2) == requests_for(2000)


def test_open_store_passes_the_http_client_and_settings(fake: FakeArango) -> None:
    engine = open_store(
        URL, arango_db=DB, arango_user="root", arango_password=PASSWORD, arango_http_client=fake
    )
    assert isinstance(engine, ArangoStore)
    engine.list_libraries()
    assert fake.requests[0].path == f"/_db/{DB}/_api/version"


def test_contract_fixture_knows_the_arango_engine() -> None:
    """The shared suite runs on ArangoDB when NOMARR_TEST_ARANGO_URL is set."""
    from nomarr_pipeline_tests.store import conftest

    assert "arango" in conftest.ENGINES
