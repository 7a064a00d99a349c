#!/bin/sh
# Create the secrets of deploy/compose.yaml in this folder, once. Existing
# files are kept, so running it again never rotates anything by accident.
set -eu
cd "$(dirname "$0")"
umask 077

rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
key() { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'; }

for name in pg_superuser_password av_owner_db_password av_app_db_password \
    av_operator_db_password av_secret_key av_invite_pepper; do
    [ -s "$name" ] || rand > "$name"
done
[ -s av_signing_key ] || key > av_signing_key

# Database URLs for the containers (env files, read by compose only).
url() { printf 'postgres://%s:%s@postgres:5432/agentvault' "$1" "$(cat "$2")"; }
[ -s database.env ] || {
    echo "DATABASE_URL=$(url av_app av_app_db_password)"
    echo "OPERATOR_DATABASE_URL=$(url av_operator av_operator_db_password)"
} > database.env
[ -s migrate.env ] || echo "MIGRATE_DATABASE_URL=$(url av_owner av_owner_db_password)" > migrate.env

# The containers run as uid 10001 and read the secrets mounted from here.
chmod 0644 av_secret_key av_signing_key av_invite_pepper
echo "Secrets are in $(pwd); keep this folder out of version control and backups of the code."
