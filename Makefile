# neonfs: build, test and demo targets. See README.md.

GO      ?= go
BIN     ?= ./neonfs

.PHONY: all build test test-short deps demo demo-stop bench

all: build

build:
	$(GO) build -o $(BIN) .

# Everything, end-to-end tests included (they need root and /dev/fuse):
# installs what is missing first, as the demo does. The S3 tests fail
# instead of skipping when versitygw is missing, the unit-file tests when
# systemd-analyze is.
# The storage packages' unit tests run under the race detector; the rest
# (the file system, the end-to-end tests) without it.
UNIT    = blockstore objstore volume snapshot durable raftwal internal pgserve sqlproxy endpoint metrics daemon systemd
UNITRE  = /($(shell echo $(UNIT) | tr ' ' '|'))(/|$$)
test: export NEONFS_REQUIRE_S3 = 1
test: export NEONFS_REQUIRE_SYSTEMD = 1
test: export NEONFS_REQUIRE_NODE = 1
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -E '$(UNITRE)')
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v -E '$(UNITRE)')

# Unit tests only: the end-to-end tests skip themselves with -short.
test-short:
	$(GO) vet ./... && $(GO) test ./... -count=1 -short

deps:
	scripts/deps.sh

# Serve a volume with an endpoint for branch main (Postgres on demand,
# suspended when idle); installs only Postgres, if missing.
demo: build
	scripts/demo.sh start $(BIN)

demo-stop:
	scripts/demo.sh stop $(BIN)

# pgbench on native ext4 and on neonfs, with the ratio.
bench: deps
	bench/pgbench.sh
