# cove: two commands set up a fresh Debian 12 machine (as root):
#   make run    install what is missing, build, start the server
#   make test   the whole test suite (boots real VMs)
GO      ?= go
COVE_HOME ?= /var/lib/cove
LISTEN  ?= 127.0.0.1:7070
export COVE_HOME

.PHONY: all deps build dashboard run test soak bench bench-scale lint clean

all: build

deps:
	@bash scripts/deps.sh

build: dashboard
	$(GO) build -o bin/cove ./cmd/cove
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/cove-agent ./cmd/cove-agent

# The dashboard's assets, embedded in bin/cove (internal/dashboard/dist,
# ignored by git): xterm.js bundled by esbuild, both pinned by
# package-lock.json and installed by npm ci into web/node_modules only
# when the lock file changed.
DASH = internal/dashboard
dashboard: $(DASH)/dist/app.js
$(DASH)/web/node_modules/.package-lock.json: $(DASH)/web/package-lock.json
	cd $(DASH)/web && npm ci --no-audit --no-fund --loglevel=error
$(DASH)/dist/app.js: $(DASH)/web/node_modules/.package-lock.json $(wildcard $(DASH)/web/src/*) $(DASH)/web/package.json
	cd $(DASH)/web && npm run --silent build

# Builds the default images if missing (with progress), then serves in the
# foreground.
run: deps build
	./bin/cove server --listen $(LISTEN) --build-images tiny,debian

# No test skips where CI is set (internal/testenv fails it instead), and
# the run ends with the count of skipped tests: 0 is required under CI. One
# package at a time (-p 1): the crash, load and VM tests of one package
# already keep both cores busy, and two packages' guests at once starved
# boots on this 2-core machine. Inside a package, tests that boot no VM
# call t.Parallel (not those that time sub-second heartbeats or answers);
# internal/session's TestMain runs 8 of those at once (they wait on ticks
# and leases, not on a CPU); its VM tests run alone, before the parallel
# ones. Within cmd/cove the end-to-end
# tests run two at a time (t.Parallel; -parallel defaults to GOMAXPROCS,
# 2 here), each on a home, server and ports of its own; TestCrashPoints
# walks its steps in groups on homes of their own, two at a time; TestLoad
# runs alone. The tests over the fake VMM driver (named *Fake*) run again
# under the race detector.
# gotestsum (a go tool of this module) prints each package as it ends and
# the output of failed tests only. The S3 tests' server, SeaweedFS's weed,
# is built by internal/s3test on first use from the Go module proxy (about
# 4 minutes on 2 cores) and cached in /var/tmp/cove-test. The E2B SDK
# test (TestE2BSDK, cmd/cove) installs the official SDK with npm ci from
# internal/e2b/sdktest/package-lock.json where it is missing, cached there
# too (the npm registry must be reachable the first time).
TESTJSON ?= $(or $(TMPDIR),/tmp)/cove-test.json
SKIPPED = grep '"Action":"skip","Package":"[^"]*","Test":' $(TESTJSON)
test: deps dashboard
	$(GO) vet ./...
	$(GO) tool gotestsum --format pkgname-and-test-fails --format-hide-empty-pkg --jsonfile $(TESTJSON) -- -count=1 -p 1 -timeout 45m ./...
	@n=$$($(SKIPPED) | wc -l); echo "skipped tests: $$n"; \
	if [ -n "$$CI" ] && [ "$$n" -ne 0 ]; then $(SKIPPED); echo "CI is set: no test may skip"; exit 1; fi
	$(GO) tool gotestsum --format pkgname-and-test-fails -- -count=1 -race -timeout 10m -run Fake ./internal/session/ ./internal/vmm/...

# The load test at full size: 32 clients on 20 sessions for 10 minutes
# (make test runs it for 1 minute on 10), after a boot storm: 3 rounds of
# 30 guests booting at once (build tag soak), and 300 random SIGKILLs of
# the server (make test: 30).
soak: deps
	$(GO) test -count=1 -v -tags soak -run '^TestBootStorm$$' -timeout 30m ./internal/vmm/qemu
	COVE_CRASH_KILLS=300 $(GO) test -count=1 -v -run '^TestCrashRandom$$' -timeout 40m ./cmd/cove
	COVE_LOAD_DURATION=10m COVE_LOAD_SESSIONS=20 $(GO) test -count=1 -v -run '^TestLoad$$' -timeout 40m ./cmd/cove

bench: deps build
	$(GO) run ./cmd/covebench

# The runs too long for make bench (issue 18): 64 clones of one template
# parked at once and woken at once, then 1,000 clones parked and stored
# in a loopback S3 store under --cache-size 2GiB. About 20 minutes on 2
# cores.
bench-scale: deps build
	$(GO) run ./cmd/covebench -only scale

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	staticcheck ./...

clean:
	rm -rf bin
