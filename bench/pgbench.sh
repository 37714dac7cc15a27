#!/usr/bin/env bash
# pgbench on native ext4 and then on neonfs, in one run, with the ratio.
#
#   sudo bench/pgbench.sh
#
# For each file system: initdb, `pgbench -i -s $SCALE`, CHECKPOINT and let
# the load's writes settle (sync; on neonfs, until no flush or merge runs),
# then TPC-B (`-c $CLIENTS -j $JOBS -T $DURATION`) and select-only (`-S`,
# same options).
# Native runs in a temp dir under /var/tmp; neonfs builds the binary (or uses
# $NEONFS_BIN), inits a volume under the same temp dir and mounts it.
# Everything (Postgres, the daemon, the mount, the temp dir) is cleaned up on
# exit.
#
# Environment: SCALE (20), CLIENTS (4), JOBS (2), DURATION (30),
# NEONFS_BIN (build from the repo), PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
DURATION=${DURATION:-30}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts a file system and runs Postgres as postgres)" >&2; exit 1; }
for b in initdb pg_ctl pgbench; do
	[ -x "$PGBIN/$b" ] || { echo "bench: $PGBIN/$b not found; run scripts/deps.sh" >&2; exit 1; }
done

bench_workdir bench

DAEMON_PID=""
MNT=$WORK/mnt
PGDATAS=()

cleanup() {
	local rc=$? d
	set +e
	for d in "${PGDATAS[@]}"; do stop_postgres "$d"; done
	if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill -TERM "$DAEMON_PID"
		for _ in $(seq 1 600); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$DAEMON_PID" 2>/dev/null
	fi
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tps_of() { awk '/^tps = /{print $3; exit}'; }

# bench_on LABEL DIR: sets RES_TPCB and RES_SEL (TPS).
bench_on() {
	local label=$1 dir=$2 pgdata port out tpcb sel
	pgdata=$dir/pgdata
	mkdir "$pgdata"
	chown postgres:postgres "$pgdata"
	chmod 0700 "$pgdata"
	PGDATAS+=("$pgdata")
	port=$(free_port)
	export PGHOST=$SOCK PGPORT=$port PGUSER=postgres PGDATABASE=postgres

	echo "bench[$label]: initdb in $pgdata" >&2
	as_postgres "$PGBIN/initdb" -D "$pgdata" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
	as_postgres "$PGBIN/pg_ctl" start -D "$pgdata" -l "$LOGS/$label-postgres.log" -w -t 600 \
		-o "-c port=$port -c listen_addresses='' -c unix_socket_directories=$SOCK -c shared_buffers=128MB -c max_wal_size=1GB" >/dev/null
	echo "bench[$label]: pgbench -i -s $SCALE" >&2
	local t0=$SECONDS
	as_postgres "$PGBIN/pgbench" -i -s "$SCALE" -q >/dev/null 2>&1
	echo "bench[$label]: init took $((SECONDS - t0))s; checkpoint and settle" >&2
	# Both file systems start the timed runs from a clean state: the load's
	# dirty pages written back (native) or flushed to layers (neonfs).
	as_postgres "$PGBIN/psql" -X -q -c "CHECKPOINT" >/dev/null
	sync
	if [ "$label" = neonfs ]; then
		neonfs_settle "$BIN" "$WORK/volume"
	fi
	echo "bench[$label]: TPC-B for ${DURATION}s" >&2
	out=$(as_postgres "$PGBIN/pgbench" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" 2>&1)
	tpcb=$(tps_of <<<"$out")
	echo "bench[$label]: select-only for ${DURATION}s" >&2
	out=$(as_postgres "$PGBIN/pgbench" -S -c "$CLIENTS" -j "$JOBS" -T "$DURATION" 2>&1)
	sel=$(tps_of <<<"$out")
	as_postgres "$PGBIN/pg_ctl" stop -D "$pgdata" -m fast -w -t 600 >/dev/null
	echo "bench[$label]: TPC-B $tpcb tps, select-only $sel tps" >&2
	RES_TPCB=${tpcb:-0} RES_SEL=${sel:-0}
}

# 1. Native.
mkdir -m 0755 "$WORK/native"
bench_on native "$WORK/native"
NATIVE_TPCB=$RES_TPCB NATIVE_SEL=$RES_SEL

# 2. neonfs.
neonfs_binary "$WORK"
"$BIN" init --data "$WORK/volume" >&2
mkdir -m 0755 "$MNT"
"$BIN" mount --data "$WORK/volume" "$MNT" >"$LOGS/neonfs.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 1 600); do
	mountpoint -q "$MNT" && break
	kill -0 "$DAEMON_PID" 2>/dev/null || { echo "bench: neonfs mount exited:" >&2; cat "$LOGS/neonfs.log" >&2; exit 1; }
	sleep 0.1
done
mountpoint -q "$MNT" || { echo "bench: $MNT not mounted after 60s" >&2; cat "$LOGS/neonfs.log" >&2; exit 1; }
bench_on neonfs "$MNT"
NEONFS_TPCB=$RES_TPCB NEONFS_SEL=$RES_SEL

kill -TERM "$DAEMON_PID"
if ! wait "$DAEMON_PID"; then
	echo "bench: warning: neonfs did not exit 0 on SIGTERM" >&2
fi
DAEMON_PID=""

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

echo
echo "pgbench scale $SCALE, $CLIENTS clients, $JOBS threads, ${DURATION}s per workload"
printf '%-14s %12s %12s %14s\n' workload "native tps" "neonfs tps" "neonfs/native"
printf '%-14s %12.1f %12.1f %14s\n' tpc-b "$NATIVE_TPCB" "$NEONFS_TPCB" "$(ratio "$NEONFS_TPCB" "$NATIVE_TPCB")"
printf '%-14s %12.1f %12.1f %14s\n' select-only "$NATIVE_SEL" "$NEONFS_SEL" "$(ratio "$NEONFS_SEL" "$NATIVE_SEL")"
