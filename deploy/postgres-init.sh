#!/usr/bin/env bash
# First start of the postgres container (docker-entrypoint-initdb.d): the Nomarr store's own
# role and database beside the Dagster instance's. The password comes from the container's
# environment (NOMARR_PG_PASSWORD), never from a file. The role owns its database, so the
# store creates and migrates its tables itself on first use.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=password="$NOMARR_PG_PASSWORD" <<'SQL'
CREATE ROLE nomarr LOGIN PASSWORD :'password';
CREATE DATABASE nomarr OWNER nomarr;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname nomarr <<'SQL'
-- PostgreSQL 15+: only the database owner may create tables in schema public anyway; make
-- it explicit, and keep everyone else out.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO nomarr;
SQL
