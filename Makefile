# The two commands of the quick start: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed
STAMP := $(VENV)/.installed-dev

.PHONY: install chromium stomp demo test lint bench clean

# What the demo needs: Conveyor and its runtime dependencies.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[redis]'
	$(BIN)/python -m compileall -q src >/dev/null  # as pip does for an installed package
	touch $(RUNTIME)

# What the tests need on top: test tools, linters, and Chromium for the browser tests.
$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev,redis,postgres,amqp,stomp,zmq]'
	$(MAKE) --no-print-directory chromium
	touch $(STAMP)

install: $(STAMP)  ## set up .venv with Conveyor and the test tools

# The browser tests drive Debian's Chromium (Playwright never downloads one). Installing it needs
# root, as CI has; elsewhere a failed install only warns, and the browser tests skip.
chromium:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
	  || { [ -z "$$CI" ] && echo "warning: could not install chromium; the browser tests will be skipped"; }

demo: $(RUNTIME)  ## worker + sample jobs on the embedded SQLite default, shown live
	$(BIN)/conveyor demo

# The stomp:// tests need RabbitMQ's STOMP plugin: turned on when it is off (a RabbitMQ that is not
# installed or not running is left alone: those tests then skip, or fail in CI).
stomp:
	@if command -v rabbitmq-plugins >/dev/null && command -v rabbitmqctl >/dev/null \
	    && rabbitmqctl -q status >/dev/null 2>&1; then \
	  rabbitmq-plugins -q list -e rabbitmq_stomp 2>/dev/null | grep -q rabbitmq_stomp \
	    || rabbitmq-plugins -q enable rabbitmq_stomp; \
	  for i in $$(seq 1 60); do \
	    $(PYTHON) -c 'import socket; socket.create_connection(("127.0.0.1", 61613), 1).close()' \
	      2>/dev/null && exit 0; sleep 0.5; \
	  done; echo "error: the STOMP plugin did not open port 61613" >&2; exit 1; \
	fi

test: $(STAMP) stomp  ## every test: unit, contract (every broker), acceptance (real worker processes), browser
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src

bench: $(STAMP)  ## benchmark on SQLite; URL=redis://... for another broker
	$(BIN)/python -m pip install --quiet -e '.[bench,redis]'
	$(BIN)/python -m bench --url $${URL:-sqlite:///$$(mktemp -d)/bench.db}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts conveyor-demo.*
