# Every target builds what it needs from nothing: a fresh clone needs only Python 3.11 and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= demo-work

.PHONY: venv browsers test demo bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

venv: $(STAMP)

# Debian's Chromium for the serving page test (CI runs as root on Debian); nothing to do when it is there.
browsers:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browsers
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/mllm-dr demo --workdir $(WORKDIR)

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py

lint: $(STAMP)
	@$(BIN)/python -m ruff --version >/dev/null 2>&1 || $(BIN)/pip install -q ruff==0.17.6
	$(BIN)/python -m ruff check platform tests bench

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
