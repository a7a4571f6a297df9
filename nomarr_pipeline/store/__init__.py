"""The one place that speaks SQL or AQL. ``open_store(url)`` picks the engine from the URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from nomarr_pipeline.store.protocol import (
    COLLECTIONS,
    DOCUMENT_COLLECTIONS,
    TIER_INPUT_FIELDS,
    AnalysisClaim,
    ClaimedFile,
    Doc,
    HeadVersion,
    SparseHistogram,
    Store,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
)

# URL scheme -> engine (``Store.engine``).
ENGINES = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "http": "arango",
    "https": "arango",
}


def store_engine(url: str) -> str:
    """The engine a store URL selects; :class:`StoreError` for an unsupported URL."""
    engine = ENGINES.get(urlsplit(url).scheme.lower())
    if engine is None:
        raise StoreError(
            f"unsupported store URL {redact_url(url)!r}: use sqlite:///<absolute path>, "
            "postgresql://user@host:port/dbname or an ArangoDB URL http(s)://host:port"
        )
    return engine


def open_store(
    url: str,
    *,
    arango_db: str = "nomarr",
    arango_user: str | None = None,
    arango_password: str | None = None,
    arango_http_client: object | None = None,
    pg_password: str | None = None,
) -> Store:
    """The store at ``sqlite:///path.db``, ``postgresql://user@host:port/db`` (password from
    ``pg_password``, else libpq's PGPASSWORD / ~/.pgpass) or ``http(s)://host:port`` (ArangoDB:
    ``arango_user``/``arango_password`` win over the URL's; the user is ``root`` without either)."""
    engine = store_engine(url)
    if engine == "sqlite":
        from nomarr_pipeline.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if engine == "postgres":
        from nomarr_pipeline.store.postgres import PostgresStore

        return PostgresStore(url, password=pg_password)
    from nomarr_pipeline.store.arango import ArangoStore

    return ArangoStore(
        url,
        database=arango_db,
        username=arango_user,
        password=arango_password,
        http_client=arango_http_client,
    )


def redact_url(url: str) -> str:
    """The URL with any user:password part removed, safe for logs and metadata (also for a
    URL too malformed to parse further, e.g. a port that is not a number)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


__all__ = [
    "COLLECTIONS",
    "DOCUMENT_COLLECTIONS",
    "TIER_INPUT_FIELDS",
    "AnalysisClaim",
    "ClaimedFile",
    "Doc",
    "HeadVersion",
    "SparseHistogram",
    "Store",
    "StoreError",
    "StoreFullError",
    "StoreReadOnlyError",
    "open_store",
    "redact_url",
    "store_engine",
]
