// Package tests holds neonfs's end-to-end tests: stock Postgres 15, fio and
// stress-ng running on a neonfs mount (or, with NEONFS_TARGET=native, on a
// plain directory, to validate the harness itself).
//
// The tests need root, /dev/fuse, the Postgres 15 binaries in
// /usr/lib/postgresql/15/bin, and (for the fio and stress-ng tests) fio and
// stress-ng; scripts/deps.sh installs them. They are skipped with -short.
//
// Environment:
//
//	NEONFS_TARGET=neonfs|native  file system under test (default neonfs)
//	NEONFS_BIN=path              use this neonfs binary instead of `go build`
//	NEONFS_BRANCH=name           pass --branch name to `neonfs mount`
//	NEONFS_MOUNT_TIMEOUT=60s     how long `neonfs mount` may take to be ready
//	NEONFS_STOP_TIMEOUT=120s     how long a SIGTERM shutdown may take
//	NEONFS_CRASH_CYCLES=5        kill cycles in TestCrashRecovery
//	NEONFS_CRASH_SEED=n          random seed for TestCrashRecovery
//	NEONFS_PG_BIN=dir            Postgres binaries (default /usr/lib/postgresql/15/bin)
//	NEONFS_KEEP=1                keep the per-test directories (volume data, logs)
package tests
