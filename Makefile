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
# The real kube-apiserver of the kube-mode tests, in its own Go module so
# the agent links none of it (e2e/KUBE.md).
KUBEMOD    := e2e/kube

.PHONY: all build test race check fmt tidy vet staticcheck deps sysdeps toolpath demo demo-kube e2e bench bench-go bench-quick fuzz clean bench-go-once

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/overlay

# The programs the demo, the tests and the benchmark suite run, as
# debian-package:command pairs; `make sysdeps` installs the missing ones (as
# root on a Debian-like system). This list is the whole truth: `make check`
# runs the test binaries with only these commands (and go) on PATH, so a
# test that runs anything else fails instead of passing on a machine that
# happens to have it.
SYSDEPS := iproute2:ip iproute2:bridge iproute2:ss iputils-ping:ping \
	iperf3:iperf3 sockperf:sockperf tcpdump:tcpdump kmod:modprobe \
	procps:ps nftables:nft iptables:iptables \
	util-linux:setpriv util-linux:unshare util-linux:nsenter util-linux:taskset \
	coreutils:sleep coreutils:true
# The directory of symlinks that is the tests' whole PATH.
TOOLPATH := $(CURDIR)/bin/toolpath

sysdeps:
	@need=""; \
	for p in $(SYSDEPS); do \
	  type -P $${p#*:} >/dev/null || need="$$need $${p%%:*}"; \
	done; \
	need=$$(echo $$need | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${need// }" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: $$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need; \
	  else \
	    echo "missing Debian packages: $$need(run: sudo make sysdeps)"; \
	  fi; \
	fi

# toolpath links every SYSDEPS command (and the go command) into TOOLPATH.
toolpath: sysdeps
	@rm -rf $(TOOLPATH) && mkdir -p $(TOOLPATH) && \
	for p in $(SYSDEPS) go:$(GO); do \
	  c=$${p#*:}; path=$$(type -P $$c) || { echo "toolpath: $$c (Debian package $${p%%:*}) is not installed: run sudo make deps"; exit 1; }; \
	  ln -sf "$$path" $(TOOLPATH)/$$(basename $$c); \
	done

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
	cd $(KUBEMOD) && $(GO) vet ./...

staticcheck: deps
	$(STATICCHECK) $(PKGS)
	cd $(KUBEMOD) && $(STATICCHECK) ./...

# The test binaries run with PATH=$(TOOLPATH): only what SYSDEPS declares.
TESTEXEC := -exec "env PATH=$(TOOLPATH)"

test: toolpath
	$(GO) test $(TESTEXEC) $(PKGS)

# The race detector over every package, root tests included when run as
# root; the whole verbose log stays in test.log. As root every test must
# run: a skip means a program SYSDEPS lacks or a kernel feature this
# machine lacks, and fails the target unless ALLOW_SKIP=1.
race: toolpath
	@set -o pipefail; $(GO) test $(TESTEXEC) -race -count=1 -timeout 20m -v $(PKGS) 2>&1 | tee test.log | \
	  grep -E --line-buffered '^(ok|FAIL|panic:)|--- (FAIL|SKIP)'
	@if [ "$$(id -u)" = 0 ] && [ -z "$(ALLOW_SKIP)" ] && grep -q -- '--- SKIP' test.log; then \
	  echo "tests were skipped as root (ALLOW_SKIP=1 accepts it):"; grep -B1 -- '--- SKIP' test.log; exit 1; \
	fi

check: deps fmt tidy vet staticcheck race bench-go-once

# go.mod and go.sum are exactly what go mod tidy makes.
tidy:
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run go mod tidy; it would change:"; $(GO) mod tidy -diff; exit 1; }
	@cd $(KUBEMOD) && { $(GO) mod tidy -diff >/dev/null || { echo "$(KUBEMOD)/go.mod/go.sum are not tidy: run go mod tidy there; it would change:"; $(GO) mod tidy -diff; exit 1; }; }

# Every Go benchmark once, so none of them rots; figures are not judged here.
bench-go-once: toolpath
	$(GO) test $(TESTEXEC) -run '^$$' -bench . -benchtime 1x $(PKGS)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 $(PKGS) | tee bench-go.txt
	$(BENCHSTAT) bench-go.txt

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecap$$' -fuzztime 60s ./encap
	$(GO) test -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime 60s ./encap
	$(GO) test -run '^$$' -fuzz '^FuzzChecksum$$' -fuzztime 60s ./tunnel

# The multi-node end-to-end suite: one line per test with its result and
# time; the whole log stays in e2e.log.
e2e:
	set -o pipefail; $(GO) test -v -count=1 -timeout 30m ./e2e/... 2>&1 | tee e2e.log | grep -E '^\s*(--- (PASS|FAIL|SKIP)|(ok|FAIL|PASS)\b|panic:)'

# The throughput comparison suite (benchmarks/README.md): underlay, kernel
# VXLAN, the floor relay, overlay and overlay --naive in one run. BENCHFLAGS
# passes options.
BENCH := bin/overlay-bench

bench: build sysdeps
	$(GO) build -o $(BENCH) ./benchmarks/cmd/overlay-bench
	$(BENCH) --overlay $(BIN) $(BENCHFLAGS)

# About 1 s per test and one repetition: CI runs it so the suite never rots;
# its figures are not judged.
# It too sees only the SYSDEPS programs.
bench-quick: build toolpath
	$(GO) build -o $(BENCH) ./benchmarks/cmd/overlay-bench
	env PATH=$(TOOLPATH) $(BENCH) --overlay $(BIN) --quick --out benchmarks/results/tmp-quick $(BENCHFLAGS)

# The README's first command: a three-node cluster in network namespaces.
demo: build sysdeps
	$(BIN) demo

# The same in kube mode: a real kube-apiserver (built from $(KUBEMOD) once,
# then cached), Nodes with pod CIDRs, agents with --kube-subnet-mgr.
demo-kube: build sysdeps
	$(BIN) demo --kube

clean:
	rm -rf bin bench-go.txt test.log e2e.log
