#!/bin/sh
# Entry point of the sluice-postgres image (deploy/compose/build-images.sh puts it in as
# /entrypoint.sh, @PGBIN@ replaced by PostgreSQL's bin dir). First start: initdb into
# /data/pg with user `sluice` and the password from $PG_PASSWORD_FILE (scram-sha-256 over TCP
# only, no Unix socket), then the `sluice` database. Listens on 127.0.0.1:$PGPORT.
set -eu
PGDATA=/data/pg
: "${PGPORT:?set PGPORT}"
: "${PG_PASSWORD_FILE:?set PG_PASSWORD_FILE}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  @PGBIN@/initdb -D "$PGDATA" -U sluice --pwfile="$PG_PASSWORD_FILE" --auth=scram-sha-256 \
    --encoding=UTF8 --locale=C
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = ''\nmax_connections = 200\njit = off\n" \
    "$PGPORT" >>"$PGDATA/postgresql.auto.conf"
  echo "CREATE DATABASE sluice" | @PGBIN@/postgres --single -D "$PGDATA" -c port="$PGPORT" postgres >/dev/null
fi
exec @PGBIN@/postgres -D "$PGDATA" -c port="$PGPORT"
