"""dagster-postgres's instance storage, opened under a lock (deploy/'s ``storage: custom:``).

Dagster creates its tables and stamps their alembic version on first use without a lock; two
processes doing it together can leave two alembic heads, and every later command then fails
(docs/RELIABILITY.md, "First use"). Upstream gap: a custom storage's ``from_config_value``
takes ``ConfigurableClassData``, which Dagster does not export; it is imported for typing only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import pg_url_from_config

from nomarr_pipeline.store.first_use import postgres_first_use

if TYPE_CHECKING:
    from dagster._serdes import ConfigurableClassData


class FirstUsePostgresStorage(DagsterPostgresStorage):
    """dagster-postgres's storage, created under an advisory lock on its database."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> DagsterPostgresStorage:
        with postgres_first_use(pg_url_from_config(config_value)):
            return super().from_config_value(inst_data, config_value)

