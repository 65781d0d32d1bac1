# make run: the chat example (channels: it reconnects and recovers) on 127.0.0.1:3000.   make test: lint, types, docs, tests (both cores).
# make dist: dist/ gets the sdist and a wheel repaired by auditwheel to a manylinux tag, both
# checked by twine (scripts/build_dist.py; release wheels: cibuildwheel, docs/deployment.md).
# make fuzz: the property tests of the protocol parsers with many random inputs.
# make test also installs redis-server, nats-server, chromium, nginx and haproxy (Debian packages)
# for the backplane tests, the browser test of the chat page and the tests behind real proxies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.harpy-installed
RUN_STAMP := $(VENV)/.harpy-run

.PHONY: run test lint typecheck docs pytest pytest-pure fuzz bench autobahn clean dist node-deps

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

CORE_SOURCES := pyproject.toml setup.py src/harpy/protocol/_core.py src/harpy/protocol/_ccore.pxd \
	$(foreach m,server/listener server/connection server/framed pubsub/groups,src/harpy/$(m).py src/harpy/$(m).pxd) \
	src/harpy/protocol/handshake.py

# What running needs: harpy alone (editable), with its compiled core.
$(RUN_STAMP): $(PY) $(CORE_SOURCES)
	$(PY) -m pip install -q -e .
	@touch $@

# Editable install with the dev and docs extras; rebuilds the compiled core when its source changes.
$(STAMP): $(PY) $(CORE_SOURCES)
	$(PY) -m pip install -q -e '.[dev,docs]'
	@touch $@

run: $(RUN_STAMP)
	@echo "harpy chat: open http://127.0.0.1:3000/ in two tabs, pick a name and a room; Ctrl-C stops"
	$(PY) -m harpy examples.channels_chat:app --host 127.0.0.1 --port 3000

test: test-deps node-deps lint typecheck docs pytest pytest-pure

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src

# The documentation site; --strict fails on a broken link or a reference that does not resolve.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

pytest: $(STAMP)
	HARPY_EXPECT_COMPILED=1 $(PY) -m pytest -W error -q

# The same protocol and server tests on the pure-Python core.
pytest-pure: $(STAMP)
	HARPY_NO_EXTENSIONS=1 $(PY) -m pytest -W error -q tests/unit tests/integration

# The property tests at length: HARPY_FUZZ_EXAMPLES random inputs per property (default 20000),
# both cores.  make test runs the same tests on a few fixed inputs.
fuzz: $(STAMP)
	HARPY_FUZZ=1 $(PY) -m pytest -W error -q tests/unit/test_fuzz_protocol.py

dist: $(STAMP)
	$(PY) scripts/build_dist.py --outdir dist

# The whole table, best of 3, in under 10 minutes (bench/RESULTS.md): the peers' system parts
# (libuv for socketify.py, npm for Bun, valgrind for bench/hotpath.py) are installed when missing.
bench: $(STAMP)
	@missing=; command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	[ -e /usr/include/zlib.h ] || missing="$$missing zlib1g-dev"; \
	ldconfig -p | grep -q 'libuv\.so\.1 ' || missing="$$missing libuv1"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py --repeat 3 --write

autobahn: $(STAMP)
	bash scripts/autobahn.sh

# redis-server and nats-server for the backplane tests (tests/backplane), chromium for the chat
# page (tests/e2e/test_chat_page.py), nginx and haproxy for the proxy tests
# (tests/e2e/test_proxies.py), installed when missing.
.PHONY: test-deps
test-deps:
	@PATH="$$PATH:/usr/sbin:/usr/local/sbin"; \
	if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null \
			|| ! command -v chromium >/dev/null || ! command -v nginx >/dev/null \
			|| ! command -v haproxy >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server nats-server chromium \
			nginx-light haproxy; \
	fi

# The official centrifuge SDK (npm) for tests/channels/test_node_sdk.py, pinned by the lock file;
# Debian's nodejs and npm installed when missing.
NODE_TESTS := tests/channels/node
node-deps: $(NODE_TESTS)/node_modules/.installed

$(NODE_TESTS)/node_modules/.installed: $(NODE_TESTS)/package.json $(NODE_TESTS)/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm; \
	fi
	cd $(NODE_TESTS) && npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

clean:
	rm -rf $(VENV) $(NODE_TESTS)/node_modules build dist src/*.egg-info src/harpy/protocol/_ccore.c src/harpy/protocol/_ccore.py src/harpy/protocol/*.so \
	src/harpy/server/*.so src/harpy/server/*.c src/harpy/pubsub/*.so src/harpy/pubsub/*.c \
	src/harpy/protocol/_chandshake.py src/harpy/protocol/_chandshake.c src/harpy/server/_c*.py src/harpy/server/_c*.pxd \
	src/harpy/pubsub/_c*.py src/harpy/pubsub/_c*.pxd
