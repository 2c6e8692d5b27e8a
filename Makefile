# `make serve` runs the relay on the example configuration; `make test` runs lint, the import
# contract (the layering of relay/), the type check and the tests: on SQLite, on PostgreSQL,
# and on SQLite again with the Sequoia backend.
# Both bootstrap a fresh Debian machine: system packages when missing, then .venv, which is
# rebuilt whenever pyproject.toml changes (the stamp file records the last install).

VENV   := .venv
STAMP  := $(VENV)/.installed
PYTHON := python3
# apt-get needs root; use sudo only when not already root.
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: serve test test-postgresql test-sequoia bench system-packages test-packages clean

serve: $(STAMP) | system-packages
	$(VENV)/bin/relay --config config.example.toml serve

# The suite on SQLite, then on PostgreSQL (RELAY_TEST_DATABASE=postgresql: 127.0.0.1:5432, a
# throwaway database per test), then with the relays on the Sequoia backend
# (RELAY_TEST_BACKEND=sequoia: `[gnupg] backend = "sequoia"`; members keep gpg). scripts/ensure_postgres.sh installs and starts a server when
# none listens; it runs first because some tests use PostgreSQL on either pass (the
# migrations' PostgreSQL cases, several nodes on one database).
test: $(STAMP) | system-packages test-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	scripts/ensure_postgres.sh
	$(VENV)/bin/pytest
	RELAY_TEST_DATABASE=postgresql $(VENV)/bin/pytest
	RELAY_TEST_BACKEND=sequoia $(VENV)/bin/pytest

# The PostgreSQL pass alone.
test-postgresql: $(STAMP) | system-packages test-packages
	scripts/ensure_postgres.sh
	RELAY_TEST_DATABASE=postgresql $(VENV)/bin/pytest

# The Sequoia pass alone.
test-sequoia: $(STAMP) | system-packages test-packages
	scripts/ensure_postgres.sh
	RELAY_TEST_BACKEND=sequoia $(VENV)/bin/pytest

# Benchmarks print their tables; they are not part of the test suite. The fan-out benchmark
# runs Debian's Schleuder beside the relay (in a scratch folder, never the system's config).
bench: $(STAMP) | system-packages
	@[ -x /usr/bin/schleuder ] || { \
		echo "installing: schleuder"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends schleuder; \
	}
	$(VENV)/bin/python -m bench.fanout
	$(VENV)/bin/python -m bench.workers
	$(VENV)/bin/python -m bench.scan
	$(VENV)/bin/python -m bench.flood
	$(VENV)/bin/python -m bench.cluster

# gpg does the OpenPGP work; python3-venv provides ensurepip, which Debian ships separately.
system-packages:
	@missing=""; \
	command -v gpg >/dev/null 2>&1 || missing="$$missing gnupg"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The tests also use Sequoia's sq (interoperability: a copy's signature checked by another
# OpenPGP implementation) and a real Postfix as the front MTA. Postfix is installed unconfigured
# ("No configuration"): the tests run private instances of it, never the system's mail service.
# The console's browser tests drive Debian's Chromium through Playwright (its own browser
# downloads are not used).
test-packages:
	@missing=""; \
	command -v sq >/dev/null 2>&1 || missing="$$missing sq"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/postfix ] || missing="$$missing postfix"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | system-packages
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var
