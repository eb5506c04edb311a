# Set-up is part of every target: a fresh clone needs only `make search` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: search test test-all install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,viz,distributed]'
	touch $(STAMP)

install: $(STAMP)

search: $(STAMP)
	$(PY) -m spinesearch.controller --flagfile=configs/search/quickstart.flags

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadgroup --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
