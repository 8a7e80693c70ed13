# sip-tts: `make run` starts the server on the embedded engine (and installs sipp for the
# README's "Try it"); `make test` installs everything (Python venv with CPU torch and the GPU
# engine's packages, the Debian peers listed in sip_tests/peers/debs-*.txt) and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# the peer kit (SIPp scenarios, baresip script, Debian package lists); PEERS=/path overrides
PEERS ?= sip_tests/peers
CONFIG ?= config/server.yaml
PYTEST_ARGS ?=
# CPU torch: on these machines `torch==2.13.0` resolves to a local CPU wheel. On an ordinary
# machine PyPI's torch==2.13.0 is a multi-GB CUDA build: for a CPU build there, pass
# TORCH="torch==2.13.0+cpu --extra-index-url <PyTorch's CPU index>" (README, "Two commands").
# On a GPU host: make install-engine TORCH=torch==2.11.0 (PyPI's CUDA build).
TORCH ?= torch==2.13.0

.PHONY: install install-engine run test unit sip-tests test-gpu peers check-config clean

# Base install: the server on the embedded espeak engine (what `make run` needs).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) -e '.[test]'
	touch $@

# The Chatterbox engine's Python side, on CPU torch (what CI tests):
#  1. torch 2.13.0 CPU first (a local file on these machines), so nothing pulls a CUDA build;
#  2. the engine's dependencies (pyproject extra "chatterbox");
#  3. chatterbox-tts, s3tokenizer, resemble-perth, torchaudio without their dependencies;
#  4. PyPI's torchaudio wheel is CUDA-built and its compiled extension cannot load beside a
#     CPU torch; we use only its pure-Python parts (Kaldi fbank, Resample), so the extension
#     libraries are removed and torchaudio falls back to them.
$(VENV)/.installed-engine: $(VENV)/.installed pyproject.toml
	$(PIP) $(TORCH)
	$(PIP) -e '.[test,chatterbox]'
	$(PIP) --no-deps chatterbox-tts==0.1.7 s3tokenizer==0.3.0 resemble-perth==1.0.1 torchaudio==2.11.0
	rm -f $(VENV)/lib/python3*/site-packages/torchaudio/lib/*.so
	$(PY) -c "import torch, torchaudio.compliance.kaldi, chatterbox.models.s3gen, chatterbox.models.t3"
	touch $@

install: $(VENV)/.installed
install-engine: $(VENV)/.installed-engine

run: install
	@bash sip_tests/peers/install.sh sip-tester
	$(VENV)/bin/sip-tts serve --config $(CONFIG)

check-config: install
	$(VENV)/bin/sip-tts check-config --config $(CONFIG)

peers:
	@test -f $(PEERS)/install.sh || { echo "peer kit not found at $(PEERS) (set PEERS=...)"; exit 1; }
	@bash $(PEERS)/install.sh

test: install-engine peers
	PEERS_DIR=$(abspath $(PEERS)) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install-engine
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# GPU-only tests (tests_gpu/: kernels and CUDA graphs against eager, overlap, mixed voices,
# float16/bfloat16) on a host with CUDA; records benchmarks/results/test_gpu.{json,md}. On the
# device machine: benchmarks/device_test_gpu.sh. Skips fail this run (no GPU: red, not green).
test-gpu:
	$(PY) benchmarks/test_gpu.py $(PYTEST_ARGS)

sip-tests: install peers
	PEERS_DIR=$(abspath $(PEERS)) $(PY) -m pytest -q sip_tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
