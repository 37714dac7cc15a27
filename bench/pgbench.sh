#!/usr/bin/env bash
# pgbench on native ext4 and on neonfs, in one run, with the ratio.
#
#   sudo bench/pgbench.sh
#   sudo ROUNDS=1 DURATION=10 bench/pgbench.sh   # quick check
#
# Each file system gets initdb, `pgbench -i -s $SCALE`, CHECKPOINT, and its
# writes settled (sync; on neonfs, until no flush or merge runs). Then, for
# each of $ROUNDS rounds, TPC-B (`-c $CLIENTS -j $JOBS -T $DURATION`) and
# select-only (`-S`, same options) run on both file systems, native first
# in odd rounds and neonfs first in even ones, each after the file systems
# settle again. Both Postgres servers stay up; only one runs a workload at
# a time. Throughput on these shared machines swings by 20% between
# identical runs, so the rounds alternate and the ratio
# reported is the median of the per-round ratios; the spread of the
# per-round ratios is printed too, since one round can land 0.1 off.
# Native runs in a temp dir under /var/tmp; neonfs builds the binary (or uses
# $NEONFS_BIN), inits a volume under the same temp dir and mounts it.
# Everything (Postgres, the daemon, the mount, the temp dir) is cleaned up on
# exit.
#
# Environment: SCALE (20), CLIENTS (4), JOBS (2), DURATION (30), ROUNDS (5),
# NEONFS_BIN (build from the repo), PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-5}
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

declare -A PORT

# setup_on LABEL DIR: a loaded, checkpointed database on DIR, left running.
setup_on() {
	local label=$1 dir=$2 pgdata=$2/pgdata port
	mkdir "$pgdata"
	chown postgres:postgres "$pgdata"
	chmod 0700 "$pgdata"
	PGDATAS+=("$pgdata")
	port=$(free_port)
	PORT[$label]=$port
	echo "bench[$label]: initdb in $pgdata" >&2
	as_postgres "$PGBIN/initdb" -D "$pgdata" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
	pg_start "$pgdata" "$LOGS/$label-postgres.log" "$port"
	echo "bench[$label]: pgbench -i -s $SCALE" >&2
	local t0=$SECONDS
	as_postgres "$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
	echo "bench[$label]: init took $((SECONDS - t0))s" >&2
	as_postgres "$PGBIN/psql" -h "$SOCK" -p "$port" -U postgres -X -q -c "CHECKPOINT" postgres >/dev/null
}

# settle: both file systems quiet: dirty pages written back (native) and no
# flush or merge running (neonfs).
settle() {
	sync
	neonfs_settle "$BIN" "$WORK/volume"
}

# run_on LABEL ARGS...: prints the TPS of one timed pgbench run.
run_on() {
	local label=$1 out
	shift
	settle
	echo "bench[$label]: pgbench $* for ${DURATION}s" >&2
	out=$(as_postgres "$PGBIN/pgbench" -h "$SOCK" -p "${PORT[$label]}" -U postgres "$@" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" postgres 2>&1)
	tps_of <<<"$out"
}

mkdir -m 0755 "$WORK/native"
setup_on native "$WORK/native"

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
setup_on neonfs "$MNT"

declare -a N_TPCB F_TPCB N_SEL F_SEL
for r in $(seq 1 "$ROUNDS"); do
	# Which file system goes first alternates too: the second run of a
	# pair inherits the first one's warm CPU caches and kernel state.
	if ((r % 2)); then
		N_TPCB[r]=$(run_on native)
		F_TPCB[r]=$(run_on neonfs)
		N_SEL[r]=$(run_on native -S)
		F_SEL[r]=$(run_on neonfs -S)
	else
		F_TPCB[r]=$(run_on neonfs)
		N_TPCB[r]=$(run_on native)
		F_SEL[r]=$(run_on neonfs -S)
		N_SEL[r]=$(run_on native -S)
	fi
	echo "bench: round $r/$ROUNDS: TPC-B ${N_TPCB[r]} / ${F_TPCB[r]}, select-only ${N_SEL[r]} / ${F_SEL[r]} (native / neonfs)" >&2
done

for d in "${PGDATAS[@]}"; do pg_stop "$d"; done
PGDATAS=()
kill -TERM "$DAEMON_PID"
if ! wait "$DAEMON_PID"; then
	echo "bench: warning: neonfs did not exit 0 on SIGTERM" >&2
fi
DAEMON_PID=""

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "pgbench scale $SCALE, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, $ROUNDS alternating rounds"
printf '%-14s %6s %12s %12s %14s\n' workload round "native tps" "neonfs tps" "neonfs/native"
TR=() SR=()
for r in $(seq 1 "$ROUNDS"); do
	TR+=("$(ratio "${F_TPCB[r]}" "${N_TPCB[r]}")")
	SR+=("$(ratio "${F_SEL[r]}" "${N_SEL[r]}")")
	printf '%-14s %6s %12.1f %12.1f %14s\n' tpc-b "$r" "${N_TPCB[r]}" "${F_TPCB[r]}" "${TR[-1]}"
	printf '%-14s %6s %12.1f %12.1f %14s\n' select-only "$r" "${N_SEL[r]}" "${F_SEL[r]}" "${SR[-1]}"
done
printf '%-14s %6s %12.1f %12.1f %14s\n' tpc-b median "$(median "${N_TPCB[@]}")" "$(median "${F_TPCB[@]}")" "$(printf '%.3f' "$(median "${TR[@]}")")"
printf '%-14s %6s %12.1f %12.1f %14s\n' select-only median "$(median "${N_SEL[@]}")" "$(median "${F_SEL[@]}")" "$(printf '%.3f' "$(median "${SR[@]}")")"
spread() { printf '%s\n' "$@" | sort -g | sed -n '1p;$p' | paste -sd' '; }
echo "per-round ratio spread (min max): tpc-b $(spread "${TR[@]}"), select-only $(spread "${SR[@]}")"
