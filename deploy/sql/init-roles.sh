#!/bin/sh
# docker-entrypoint-initdb.d hook of the postgres image: create the AgentVault
# roles from the password files that compose mounts as secrets.
set -eu
psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
    -v owner_password="$(cat /run/secrets/av_owner_db_password)" \
    -v app_password="$(cat /run/secrets/av_app_db_password)" \
    -v operator_password="$(cat /run/secrets/av_operator_db_password)" \
    -v dbname=agentvault \
    -f /agentvault/roles.sql postgres
