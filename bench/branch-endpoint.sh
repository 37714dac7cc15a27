#!/usr/bin/env bash
# `neonfs branch create --endpoint` from a parent under pgbench load, to the
# first row of `SELECT count(*) FROM pgbench_accounts` on the new branch's
# endpoint (fork after the parent's CHECKPOINT, endpoint, mount, Postgres
# start with crash recovery, the query), median and p90 of $RUNS per scale.
#
#   sudo bench/branch-endpoint.sh
#   sudo SCALES=10 RUNS=3 bench/branch-endpoint.sh
#
# For each scale: init a volume, `neonfs serve`, an endpoint for main,
# `pgbench -i -s SCALE` through it, then pgbench (TPC-B, 2 clients) runs
# against main for the whole measurement while each run creates a branch
# with an endpoint and queries it, then deletes it (--force). Also once with
# --no-checkpoint, to show what the checkpoint saves. Passwords go to the
# clients through PGPASSWORD, never argv.
#
# Environment: SCALES ("10 130"), RUNS (5), NEONFS_BIN (build from the repo),
# PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALES=${SCALES:-"10 130"}
RUNS=${RUNS:-5}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts a file system and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb postgres pgbench psql
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "bench: RUNS=$RUNS: want a positive count" >&2; exit 1; }

bench_workdir branch-endpoint
SERVE_PID=""
LOAD_PID=""

cleanup() {
	local rc=$?
	set +e
	[ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null
	[ -n "$SERVE_PID" ] && stop_pid "$SERVE_PID"
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

quantile() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { r = int(q * NR + 0.999999); if (r < 1) r = 1; print v[r] }'; }

# url_part URL: sets PGHOST PGPORT PGPASSWORD from postgres://postgres:PW@HOST:PORT/db.
url_part() {
	local rest=${1#postgres://postgres:}
	export PGPASSWORD=${rest%%@*}
	rest=${rest#*@}
	rest=${rest%%/*}
	export PGHOST=${rest%:*} PGPORT=${rest##*:} PGUSER=postgres PGDATABASE=postgres
}

neonfs_binary "$WORK"
declare -A MED P90 NOCKPT INIT

bench_scale() {
	local scale=$1 vol=$WORK/s$1/volume run=$WORK/s$1/run url burl t0 t1 i n times=()
	mkdir -p "$WORK/s$scale"
	"$BIN" init --data "$vol" >/dev/null
	"$BIN" serve --data "$vol" --run-dir "$run" >"$LOGS/serve-s$scale.log" 2>&1 &
	SERVE_PID=$!
	for i in $(seq 1 600); do "$BIN" endpoint list --data "$vol" >/dev/null 2>&1 && break; sleep 0.1; done
	url=$("$BIN" endpoint create main --data "$vol" --suspend-after 0 --pg-conf max_wal_size=1GB)
	echo "bench[s$scale]: pgbench -i -s $scale through the endpoint" >&2
	t0=$SECONDS
	(url_part "$url" && "$PGBIN/pgbench" -i -s "$scale" -q >/dev/null 2>&1)
	INIT[$scale]=$((SECONDS - t0))
	(url_part "$url" && "$PGBIN/pgbench" -c 2 -T 100000 >/dev/null 2>&1) &
	LOAD_PID=$!
	sleep 5
	one() { # one NAME [FLAGS]: prints ms from branch create to the first row
		local name=$1 burl t0 tc t1 n
		shift
		t0=$(now_ms)
		burl=$("$BIN" branch create "$name" --data "$vol" --endpoint --suspend-after 0 "$@" 2>/dev/null)
		tc=$(now_ms)
		n=$(url_part "$burl" && "$PGBIN/psql" -X -A -t -c "SELECT count(*) FROM pgbench_accounts")
		t1=$(now_ms)
		echo "bench[s$scale]: $name: branch create --endpoint $((tc - t0)) ms, then connect + count(*) $((t1 - tc)) ms" >&2
		[ "$n" = "$((scale * 100000))" ] || { echo "bench: pgbench_accounts on $name has $n rows, want $((scale * 100000))" >&2; exit 1; }
		"$BIN" branch delete "$name" --data "$vol" --force >/dev/null
		echo $((t1 - t0))
	}
	for i in $(seq 1 "$RUNS"); do
		times+=("$(one "b$i")")
		sleep 2
	done
	MED[$scale]=$(printf '%s\n' "${times[@]}" | quantile 0.5)
	P90[$scale]=$(printf '%s\n' "${times[@]}" | quantile 0.9)
	echo "bench[s$scale]: branch create --endpoint to first row, ms: ${times[*]}" >&2
	sleep 10 # let WAL pile up again
	NOCKPT[$scale]=$(one nockpt --no-checkpoint)
	echo "bench[s$scale]: with --no-checkpoint: ${NOCKPT[$scale]} ms" >&2
	kill "$LOAD_PID" 2>/dev/null
	wait "$LOAD_PID" 2>/dev/null || true
	LOAD_PID=""
	echo "bench[s$scale]: the daemon's timings (checkpoint before each fork; each wake: mount to Postgres ready):" >&2
	grep -E 'checkpointed before a fork|endpoint woke' "$LOGS/serve-s$scale.log" | sed -n 's/.*msg="\([^"]*\)".* \(branch=[^ ]*\).* took=\([^ ]*\).*/  \1 \2 took \3/p' >&2 || true
	stop_pid "$SERVE_PID"
	SERVE_PID=""
	rm -rf "$WORK/s$scale"
}

for s in $SCALES; do bench_scale "$s"; done

echo
echo "branch create --endpoint under pgbench load (2 clients) to the first row of count(*) on the branch, $RUNS runs"
printf '%6s %10s %12s %12s %16s\n' scale "init s" "p50 ms" "p90 ms" "no-checkpoint ms"
for s in $SCALES; do
	printf '%6s %10s %12s %12s %16s\n' "$s" "${INIT[$s]}" "${MED[$s]}" "${P90[$s]}" "${NOCKPT[$s]}"
done
