# One-command entry points. Everything runs inside .venv, built from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint serve migrate check-rls stop-db clean

$(STAMP): requirements.txt requirements-dev.txt client/pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  (echo "AgentVault needs Python 3.11 or newer" >&2; exit 1)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)  ## Create .venv with the server, the client SDK and the test tools.

demo: $(STAMP)  ## Run the main job end to end on the embedded defaults.
	$(BIN)/python manage.py demo

test: $(STAMP)  ## Run the whole test suite.
	$(BIN)/pytest

lint: $(STAMP)  ## Formatting, lint and types of the server code.
	$(BIN)/ruff format --check agentvault tenants audit enrollment messaging tests
	$(BIN)/ruff check agentvault tenants audit enrollment messaging tests
	$(BIN)/mypy agentvault tenants audit enrollment messaging

migrate: $(STAMP)
	$(BIN)/python manage.py migrate

serve: migrate  ## Serve HTTP and WebSocket on 127.0.0.1:8000 (one worker).
	$(BIN)/daphne -b 127.0.0.1 -p 8000 --websocket_timeout 43200 \
	  --ping-interval 20 --ping-timeout 30 --access-log /dev/null \
	  --websocket-max-message-size 294912 --websocket-max-frame-size 294912 \
	  agentvault.asgi:application

check-rls: $(STAMP)
	$(BIN)/python manage.py check_rls

stop-db: $(STAMP)  ## Stop the embedded PostgreSQL.
	$(BIN)/python -c 'from pathlib import Path; import os; \
	from agentvault.embedded import stop_embedded_postgres as stop; \
	print("stopped" if stop(Path(os.environ.get("AV_DATA_DIR", ".agentvault")).resolve()) else "not running")'

clean: stop-db
	rm -rf $(VENV) .agentvault
