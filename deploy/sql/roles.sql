-- AgentVault database roles, for a PostgreSQL the server does not start itself.
--
-- Run once as a superuser (BYPASSRLS can only be granted by one), before
-- the first migration; it is idempotent and only ever adds:
--
--   psql -X -v ON_ERROR_STOP=1 \
--        -v owner_password="$(cat owner.pw)" \
--        -v app_password="$(cat app.pw)" \
--        -v operator_password="$(cat operator.pw)" \
--        [-v dbname=agentvault] -f deploy/sql/roles.sql postgres
--
-- The same three roles as the embedded default (agentvault/embedded.py):
--   av_owner     runs migrations (MIGRATE_DATABASE_URL) and owns every table;
--   av_app       serves requests (DATABASE_URL): NOSUPERUSER NOBYPASSRLS,
--                owns nothing, so row-level security always applies to it;
--   av_operator  BYPASSRLS, for the few manage.py commands that must read
--                across tenants (OPERATOR_DATABASE_URL).
-- Table grants to av_app and av_operator are made by the migrations
-- (tenants.operations.GrantAppRole), as the owner, with default privileges.

\set ON_ERROR_STOP on
\if :{?dbname}
\else
  \set dbname agentvault
\endif

SELECT format('CREATE ROLE av_owner LOGIN PASSWORD %L', :'owner_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'av_owner') \gexec
SELECT format('CREATE ROLE av_app LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'av_app') \gexec
SELECT format('CREATE ROLE av_operator LOGIN PASSWORD %L', :'operator_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'av_operator') \gexec

-- Attributes are (re)stated every run, so a hand-edited role is put right.
ALTER ROLE av_owner NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
ALTER ROLE av_app NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
ALTER ROLE av_operator NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;

-- A request that leaves a transaction open must not hold locks for long.
ALTER ROLE av_app SET idle_in_transaction_session_timeout = '60s';

-- Membership lets the owner (during a migration) create objects owned by
-- the operator role, such as the SECURITY DEFINER directory function, and
-- set default privileges for the app role. Neither role gains anything
-- from the owner: membership is one way.
GRANT av_operator TO av_owner;
GRANT av_app TO av_owner;

SELECT format('CREATE DATABASE %I OWNER av_owner', :'dbname')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \gexec

SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'dbname') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO av_app, av_operator', :'dbname') \gexec

\connect :dbname

-- Only the owner creates objects in the schema; the others use it.
ALTER SCHEMA public OWNER TO av_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO av_app, av_operator;
