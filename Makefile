# make run: the chat example on 127.0.0.1:3000.   make test: lint, types, tests (both cores).
# make test also installs redis-server and nats-server (Debian packages) for the backplane tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.harpy-installed

.PHONY: run test lint typecheck pytest pytest-pure bench autobahn clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# Editable install with the dev extras; rebuilds the compiled core when its source changes.
$(STAMP): $(PY) pyproject.toml setup.py src/harpy/protocol/_core.py src/harpy/protocol/_ccore.pxd
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

run: $(STAMP)
	@echo "harpy chat example: open ws://127.0.0.1:3000/chat (e.g. python -m websockets ws://127.0.0.1:3000/chat), Ctrl-C stops"
	$(PY) -m harpy examples.chat:app --host 127.0.0.1 --port 3000

test: test-deps lint typecheck pytest pytest-pure

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src

pytest: $(STAMP)
	HARPY_EXPECT_COMPILED=1 $(PY) -m pytest -W error -q

# The same protocol and server tests on the pure-Python core.
pytest-pure: $(STAMP)
	HARPY_NO_EXTENSIONS=1 $(PY) -m pytest -W error -q tests/unit tests/integration

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py --write

autobahn: $(STAMP)
	bash scripts/autobahn.sh

# redis-server and nats-server for the backplane tests (tests/backplane), installed when missing.
.PHONY: test-deps
test-deps:
	@PATH="$$PATH:/usr/sbin:/usr/local/sbin"; \
	if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server nats-server; \
	fi

clean:
	rm -rf $(VENV) build src/*.egg-info src/harpy/protocol/_ccore.c src/harpy/protocol/_ccore.py src/harpy/protocol/*.so
