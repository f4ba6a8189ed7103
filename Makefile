# cfsboot developer entry points.  `make test` is what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup deps oracle example test lint bench clean

# (_native.c: the optional C accelerator is compiled by the editable install)
$(VENV)/.installed: pyproject.toml $(wildcard src/cfsboot/*.c src/cfsboot/*.h)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: deps $(VENV)/.installed

# Debian tools the tests compare against (only when root; otherwise those tests skip).
deps:
	@bash scripts/install-debian-deps.sh

# C mkcomposefs in a debootstrap chroot, for the differential tests (root only).
oracle:
	@bash scripts/setup-c-oracle.sh

example: setup
	bash scripts/example.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: setup oracle lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/digest.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info src/cfsboot/*.so
