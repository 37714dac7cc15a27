#!/usr/bin/env bash
# Branch creation cost and first query on a new branch, at several database
# sizes, with the ratio: creating a branch should cost the same at any size.
#
#   sudo bench/branch.sh
#   sudo SCALES=5 bench/branch.sh            # small only
#
# For each pgbench scale: init a volume, mount it (the daemon), initdb and
# start Postgres on it, `pgbench -i -s SCALE`; then, with Postgres running,
# checkpoint and let the daemon finish flushing, then
# time `neonfs branch create` $RUNS times (each a new name; the command goes
# to the running daemon over its control socket) and report the median and
# p90; then time the first query on a new branch once: `neonfs mount
# --branch` (handed to the daemon) + Postgres starting on it (crash recovery)
# + the first `SELECT count(*) FROM pgbench_branches` returning. Everything
# (Postgres servers, the daemon, mounts, the temp dir) is cleaned up on exit.
#
# Environment: SCALES ("5 130"), RUNS (10), NEONFS_BIN (build from the
# repo), PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALES=${SCALES:-"5 130"}
RUNS=${RUNS:-10}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts a file system and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb pg_ctl pgbench psql
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "bench: RUNS=$RUNS: want a positive count" >&2; exit 1; }

bench_workdir branch-bench

DAEMON_PID=""
PGDATAS=()

stop_daemon() {
	[ -n "$DAEMON_PID" ] || return 0
	stop_pid "$DAEMON_PID"
	wait "$DAEMON_PID" 2>/dev/null || echo "bench: warning: neonfs did not exit 0 on SIGTERM" >&2
	DAEMON_PID=""
}

cleanup() {
	local rc=$? i
	set +e
	# Servers on branches first, then main's: all before their mounts go.
	for ((i = ${#PGDATAS[@]} - 1; i >= 0; i--)); do stop_postgres "${PGDATAS[i]}"; done
	stop_daemon
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM


psql_at() { as_postgres "$PGBIN/psql" -X -q -A -t -h "$SOCK" -p "$1" -U postgres -d postgres -c "$2"; }

# quantile Q: the Q-quantile (nearest rank) of the numbers on stdin.
quantile() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { r = int(q * NR + 0.999999); if (r < 1) r = 1; print v[r] }'; }

neonfs_binary "$WORK"

declare -A MEDIAN P90 DBSIZE MOUNT_MS START_MS QUERY_MS FIRST_MS

# bench_scale SCALE: fills the arrays above for SCALE.
bench_scale() {
	local scale=$1 dir vol mnt pgdata port bmnt bpgdata bport t0 t1 t2 t3 i times=() n
	dir=$WORK/s$scale
	vol=$dir/volume
	mnt=$dir/mnt
	mkdir -m 0755 "$dir" "$mnt"
	"$BIN" init --data "$vol" >/dev/null
	"$BIN" mount --data "$vol" "$mnt" >"$LOGS/neonfs-s$scale.log" 2>&1 &
	DAEMON_PID=$!
	wait_mounted "$mnt" "$DAEMON_PID" "$LOGS/neonfs-s$scale.log"

	pgdata=$mnt/pgdata
	mkdir "$pgdata"
	chown postgres:postgres "$pgdata"
	chmod 0700 "$pgdata"
	PGDATAS+=("$pgdata")
	port=$(free_port)
	echo "bench[s$scale]: initdb and pgbench -i -s $scale" >&2
	as_postgres "$PGBIN/initdb" -D "$pgdata" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
	pg_start "$pgdata" "$LOGS/postgres-s$scale.log" "$port"
	t0=$SECONDS
	as_postgres "$PGBIN/pgbench" -i -s "$scale" -q -h "$SOCK" -p "$port" -U postgres postgres >/dev/null 2>&1
	DBSIZE[$scale]=$(psql_at "$port" "SELECT pg_size_pretty(pg_database_size('postgres'))")
	echo "bench[s$scale]: init took $((SECONDS - t0))s, database ${DBSIZE[$scale]}; $RUNS branch creates" >&2
	psql_at "$port" "CHECKPOINT" >/dev/null
	neonfs_settle "$BIN" "$vol"

	for i in $(seq 1 "$RUNS"); do
		t0=$(now_ms)
		"$BIN" branch create --data "$vol" "b$i" >/dev/null
		t1=$(now_ms)
		times+=($((t1 - t0)))
	done
	MEDIAN[$scale]=$(printf '%s\n' "${times[@]}" | quantile 0.5)
	P90[$scale]=$(printf '%s\n' "${times[@]}" | quantile 0.9)
	echo "bench[s$scale]: branch create ms: ${times[*]}" >&2

	echo "bench[s$scale]: first query on branch b1" >&2
	bmnt=$dir/b1
	mkdir -m 0755 "$bmnt"
	bpgdata=$bmnt/pgdata
	bport=$(free_port)
	t0=$(now_ms)
	"$BIN" mount --data "$vol" --branch b1 "$bmnt" >/dev/null
	t1=$(now_ms)
	PGDATAS+=("$bpgdata")
	pg_start "$bpgdata" "$LOGS/postgres-s$scale-b1.log" "$bport"
	t2=$(now_ms)
	n=$(psql_at "$bport" "SELECT count(*) FROM pgbench_branches")
	t3=$(now_ms)
	[ "$n" = "$scale" ] || { echo "bench: pgbench_branches on the branch has $n rows, want $scale" >&2; exit 1; }
	MOUNT_MS[$scale]=$((t1 - t0))
	START_MS[$scale]=$((t2 - t1))
	QUERY_MS[$scale]=$((t3 - t2))
	FIRST_MS[$scale]=$((t3 - t0))

	pg_stop "$bpgdata"
	"$BIN" unmount --data "$vol" "$bmnt" >/dev/null
	pg_stop "$pgdata"
	PGDATAS=()
	stop_daemon
	rm -rf "$dir"
}

for s in $SCALES; do
	bench_scale "$s"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo
echo "neonfs branch create ($RUNS runs per scale, Postgres running) and first query on a new branch"
printf '%6s %10s %12s %12s %10s %10s %10s %12s\n' scale "db size" "create p50" "create p90" mount "pg start" "1st query" "1st total"
for s in $SCALES; do
	printf '%6s %10s %10s ms %9s ms %7s ms %7s ms %7s ms %9s ms\n' "$s" "${DBSIZE[$s]}" "${MEDIAN[$s]}" "${P90[$s]}" \
		"${MOUNT_MS[$s]}" "${START_MS[$s]}" "${QUERY_MS[$s]}" "${FIRST_MS[$s]}"
done
read -r -a scales <<<"$SCALES"
first=${scales[0]} last=${scales[${#scales[@]} - 1]}
if [ "$first" != "$last" ]; then
	echo "ratio of create medians, scale $last / scale $first: $(ratio "${MEDIAN[$last]}" "${MEDIAN[$first]}")"
	echo "ratio of first-query totals, scale $last / scale $first: $(ratio "${FIRST_MS[$last]}" "${FIRST_MS[$first]}")"
fi
