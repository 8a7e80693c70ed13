# sip-tts: `make run` starts the server on the embedded engine; `make test` installs
# everything (Python venv, Debian peers: sipp, baresip, kamailio, tcpdump) and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PEERS ?= $(abspath ../shared/peers)
CONFIG ?= config/server.yaml
PYTEST_ARGS ?=

.PHONY: install run test unit sip-tests peers check-config clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/sip-tts serve --config $(CONFIG)

check-config: install
	$(VENV)/bin/sip-tts check-config --config $(CONFIG)

peers:
	@test -x $(PEERS)/install.sh || { echo "peer kit not found at $(PEERS) (set PEERS=...)"; exit 1; }
	bash $(PEERS)/install.sh

test: install peers
	PEERS_DIR=$(PEERS) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

sip-tests: install peers
	PEERS_DIR=$(PEERS) $(PY) -m pytest -q sip_tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
