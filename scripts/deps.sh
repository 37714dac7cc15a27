#!/usr/bin/env bash
# Installs what neonfs's demo, tests and CI need, only if it is missing:
# versitygw (with go install) and, with apt-get, fuse3, fio, stress-ng,
# Postgres 15 (Debian 12's `postgresql`), make, autoconf and automake
# (to build pjdfstest, the POSIX conformance suite the tests run), and
# systemd (systemd-analyze verify checks the units `neonfs systemd install`
# writes). Runs `apt-get update` only when something has to be installed.
set -euo pipefail

# versitygw, the S3 server the object-store tests run against, is a Go
# binary: `go install` it (no root needed) when it is not in GOPATH/bin.
versitygw_version=v1.8.0
install_versitygw() {
	if ! command -v go >/dev/null 2>&1; then
		echo "deps: go not found; cannot install versitygw, which the S3 tests need" >&2
		return 0
	fi
	local bin
	bin="$(go env GOPATH | cut -d: -f1)/bin/versitygw"
	if [ -x "$bin" ]; then
		echo "deps: versitygw present ($bin)"
		return 0
	fi
	echo "deps: installing versitygw $versitygw_version with go install (about 90 s)"
	go install "github.com/versity/versitygw/cmd/versitygw@$versitygw_version"
	echo "deps: installed $bin"
}
install_versitygw

# Neon's serverless driver for the endpoint tests (tests/node, pinned by
# its package-lock.json): npm ci when it is not installed yet.
install_driver() {
	local dir
	dir="$(dirname "$0")/../tests/node"
	if [ -d "$dir/node_modules/@neondatabase/serverless" ]; then
		echo "deps: serverless driver present ($dir/node_modules)"
		return 0
	fi
	if ! command -v npm >/dev/null 2>&1; then
		echo "deps: npm not found; the serverless driver tests need Node.js and npm" >&2
		return 1
	fi
	echo "deps: installing the serverless driver with npm ci in $dir"
	(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}
install_driver

missing=()
have_pkg() { dpkg -s "$1" >/dev/null 2>&1; }

# Package name, then a command that shows it is already there.
check() {
	local pkg=$1 probe=$2
	if ! have_pkg "$pkg" && ! command -v "$probe" >/dev/null 2>&1 && [ ! -x "$probe" ]; then
		missing+=("$pkg")
	fi
}

check fuse3 fusermount3
check fio fio
check stress-ng stress-ng
check make make
check autoconf autoreconf
check automake automake
check gcc gcc
check systemd systemd-analyze
# Postgres 15 from Debian 12, with pgbench and pg_amcheck (both are in
# postgresql-15; `postgresql` depends on it).
pgbin=/usr/lib/postgresql/15/bin
if ! { [ -x $pgbin/postgres ] && [ -x $pgbin/pgbench ] && [ -x $pgbin/pg_amcheck ] && id postgres >/dev/null 2>&1; }; then
	missing+=(postgresql)
fi

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all present (fuse3 fio stress-ng make autoconf automake gcc systemd postgresql)"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing ${missing[*]}; run as root to install them" >&2
	exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
