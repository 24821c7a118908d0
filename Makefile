# One command equals CI: `make check` is what .ci/run runs after `make deps`.
SHELL      := /bin/bash
GO         ?= go
GOFLAGS    ?= -buildvcs=false
export GOFLAGS
GOBIN      := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
BENCHSTAT   := $(GOBIN)/benchstat
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN        := bin/overlay
PKGS       := ./...

.PHONY: all build test race check fmt vet staticcheck deps sysdeps demo e2e bench bench-go bench-quick fuzz clean bench-go-once

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/overlay

# Debian packages the demo, the tests and the benchmark suite use; installed
# only when missing, and only as root on a Debian-like system.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  need=""; \
	  for p in iproute2:ip iputils-ping:ping iperf3:iperf3 sockperf:sockperf tcpdump:tcpdump kmod:modprobe procps:ps nftables:nft iptables:iptables; do \
	    command -v $${p#*:} >/dev/null || need="$$need $${p%%:*}"; \
	  done; \
	  if [ -n "$$need" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need; \
	  fi; \
	fi

# sysdeps plus the Go tools `make check` runs.
deps: sysdeps
	@test -x $(STATICCHECK) || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	@test -x $(BENCHSTAT) || $(GO) install golang.org/x/perf/cmd/benchstat@latest

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go') $$(git ls-files --others --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)
	GOOS=darwin $(GO) build $(PKGS)

staticcheck:
	$(STATICCHECK) $(PKGS)

test:
	$(GO) test $(PKGS)

# The race detector over every package, root tests included when run as root.
race:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

check: fmt vet staticcheck race bench-go-once

# Every Go benchmark once, so none of them rots; figures are not judged here.
bench-go-once:
	$(GO) test -run '^$$' -bench . -benchtime 1x $(PKGS)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 $(PKGS) | tee bench-go.txt
	$(BENCHSTAT) bench-go.txt

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecap$$' -fuzztime 60s ./encap
	$(GO) test -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime 60s ./encap

# The multi-node end-to-end suite: one line per test with its result and
# time; the whole log stays in e2e.log.
e2e:
	set -o pipefail; $(GO) test -v -count=1 -timeout 30m ./e2e/... 2>&1 | tee e2e.log | grep -E '^\s*(--- (PASS|FAIL|SKIP)|(ok|FAIL|PASS)\b|panic:)'

# The throughput comparison suite (benchmarks/README.md): underlay, kernel
# VXLAN, overlay and overlay --naive in one run. BENCHFLAGS passes options.
BENCH := bin/overlay-bench

bench: build sysdeps
	$(GO) build -o $(BENCH) ./benchmarks/cmd/overlay-bench
	$(BENCH) --overlay $(BIN) $(BENCHFLAGS)

# About 1 s per test and one repetition: CI runs it so the suite never rots;
# its figures are not judged.
bench-quick: build sysdeps
	$(GO) build -o $(BENCH) ./benchmarks/cmd/overlay-bench
	$(BENCH) --overlay $(BIN) --quick --out benchmarks/results/tmp-quick $(BENCHFLAGS)

# The README's first command: a three-node cluster in network namespaces.
demo: build sysdeps
	$(BIN) demo

clean:
	rm -rf bin bench-go.txt
