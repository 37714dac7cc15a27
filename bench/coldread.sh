#!/usr/bin/env bash
# Cold reads: select-only pgbench from a cold start, and the latency of one
# cold 8 KiB read, on native ext4 and on neonfs (local object store).
#
#   sudo bench/coldread.sh
#   sudo ROUNDS=2 DURATION=10 bench/coldread.sh   # quick check
#
# Setup, once per file system: native ext4 gets initdb, `pgbench -i -s
# $SCALE` and CHECKPOINT in a directory; neonfs gets `neonfs init --data V`
# and `neonfs mount --data V MNT` (the daemon; $NEONFS_ARGS added), the
# same load on the mount, then Postgres stops and the daemon is stopped
# (SIGTERM; it flushes its memtable into layers and exits), so every cold
# start below reads layers, not a replayed log.
#
# Then $ROUNDS rounds, native and neonfs alternating which goes first.
# "Cold" is: Postgres stopped; on neonfs the daemon stopped as well, so its
# block cache (fastcache) is empty and the kernel forgets the mount's
# pages; `sync; echo 3 > /proc/sys/vm/drop_caches` (the page cache, the
# layer files' included); on neonfs the daemon mounts again. In each round,
# on each file system:
#  (a) cold start, Postgres starts, `pgbench -S -c $CLIENTS -j $JOBS -T
#      $DURATION` runs at once: its TPS (and, from `-P 1`, the mean TPS
#      of its first $HEAD seconds, when the caches are coldest); Postgres
#      stops.
#  (b) cold start without Postgres, then bench/coldread reads $READS
#      random 8 KiB-aligned blocks, each once, one at a time, of the
#      largest file of pgbench_accounts (`pg_relation_filepath`), opened
#      with posix_fadvise(POSIX_FADV_RANDOM) so the kernel reads nothing
#      ahead: median, p90, mean, the median of the first 100 reads and
#      the very first read, in µs. Both file systems are read at the same
#      offsets (same seed per round). The neonfs daemon runs with
#      --metrics, so its own time per FUSE READ is printed beside the
#      reader's: the difference is FUSE and the kernel. neonfs reads
#      around a layer record that misses the page cache (objstore
#      readaround.go), so later reads near earlier ones get cheaper: the
#      median of the first 100 reads shows the coldest ones.
# The summary has the medians over rounds and the spread of the per-round
# ratios: these shared 2-core machines swing ±20% between identical runs.
# Note that dropping the page cache is machine-wide.
#
# Everything (Postgres, the daemon, the mount, the temp dir under /var/tmp)
# is cleaned up on exit. Needs curl and jq.
#
# Environment: SCALE (20), CLIENTS (4), JOBS (2), DURATION (30), ROUNDS (5),
# HEAD (5: seconds of the "first seconds" TPS), READS (2000), NEONFS_ARGS
# (extra `neonfs mount` flags), NEONFS_WAL_SYNC (fdatasync, as
# endpoints run), NEONFS_BIN (build from the repo), PGBIN
# (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-5}
HEAD=${HEAD:-5}
READS=${READS:-2000}
NEONFS_ARGS=${NEONFS_ARGS:-}
NEONFS_WAL_SYNC=${NEONFS_WAL_SYNC:-fdatasync}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts a file system, drops the page cache and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb pg_ctl pgbench psql
need_tools curl jq
for v in SCALE CLIENTS JOBS DURATION ROUNDS HEAD READS; do
	[ "${!v}" -ge 1 ] 2>/dev/null || { echo "bench: $v=${!v}: want a positive count" >&2; exit 1; }
done

bench_workdir coldread

VOL=$WORK/volume
MNT=$WORK/mnt
NPG=$WORK/native/pgdata
PG=$MNT/pgdata
DAEMON_PID=""
DAEMON_LOG=""
PGDATAS=()

cleanup() {
	local rc=$? d
	set +e
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ -n "$DAEMON_LOG" ] && [ -s "$DAEMON_LOG" ]; then
		echo "---- $DAEMON_LOG (last 30 lines)" >&2
		tail -n 30 "$DAEMON_LOG" >&2
	fi
	for d in "${PGDATAS[@]}"; do stop_postgres "$d"; done
	if [ -n "$DAEMON_PID" ]; then
		stop_pid "$DAEMON_PID"
		wait "$DAEMON_PID" 2>/dev/null
	fi
	unmount_and_remove "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench: $*" >&2; exit 1; }

psql_at() { as_postgres timeout 600 "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$SOCK" -p "$1" -U postgres -d postgres -c "$2"; }

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches || die "could not drop the page cache"
}

# start_pg PGDATA PORT LABEL [EXTRA]: Postgres on PGDATA, tracked for cleanup.
start_pg() {
	pg_start "$1" "$LOGS/postgres-$3.log" "$2" "${4:-}"
	PGDATAS=("$1")
}

stop_pg() {
	pg_stop "$1"
	PGDATAS=()
}

# mount_neonfs LOGNAME [FLAGS...]: starts the daemon serving $VOL at $MNT.
mount_neonfs() {
	DAEMON_LOG=$LOGS/neonfs-$1.log
	shift
	# shellcheck disable=SC2086 # NEONFS_ARGS are flags, split on purpose
	"$BIN" mount --data "$VOL" $NEONFS_ARGS "$@" "$MNT" >"$DAEMON_LOG" 2>&1 &
	DAEMON_PID=$!
	wait_mounted "$MNT" "$DAEMON_PID" "$DAEMON_LOG" 120
}

# stop_neonfs: SIGTERM to the daemon and wait for it: it flushes its
# memtable into layers, unmounts and exits.
stop_neonfs() {
	local pid=$DAEMON_PID rc=0
	stop_pid "$pid"
	wait "$pid" || rc=$?
	DAEMON_PID=""
	[ "$rc" -eq 0 ] || echo "bench: warning: the neonfs daemon exited with status $rc on SIGTERM (see $DAEMON_LOG)" >&2
	mountpoint -q "$MNT" && die "$MNT still mounted after the daemon exited"
	return 0
}

# load FS PGDATA PORT [EXTRA]: initdb, pgbench -i, CHECKPOINT; sets
# RELFILE[FS] to the largest file of pgbench_accounts (relative to PGDATA).
declare -A RELFILE PORT
load() {
	local fs=$1 pg=$2 port=$3 rel f best=0 size
	mkdir -m 0700 "$pg"
	chown postgres:postgres "$pg"
	PGDATAS=("$pg")
	echo "bench[$fs]: initdb and pgbench -i -s $SCALE" >&2
	as_postgres "$PGBIN/initdb" -D "$pg" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
	start_pg "$pg" "$port" "$fs" "${4:-}"
	as_postgres "$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres -i -s "$SCALE" -q postgres >"$LOGS/pgbench-$fs-init.log" 2>&1 ||
		die "pgbench -i on $fs failed; see $LOGS/pgbench-$fs-init.log"
	psql_at "$port" "CHECKPOINT" >/dev/null
	rel=$(psql_at "$port" "SELECT pg_relation_filepath('pgbench_accounts')")
	for f in "$pg/$rel" "$pg/$rel".*; do
		[ -f "$f" ] || continue
		size=$(stat -c %s "$f")
		if [ "$size" -gt "$best" ]; then best=$size; RELFILE[$fs]=${f#"$pg"/}; fi
	done
	[ -n "${RELFILE[$fs]:-}" ] || die "no file of pgbench_accounts ($rel) under $pg"
	echo "bench[$fs]: pgbench_accounts: ${RELFILE[$fs]}, $best bytes" >&2
	stop_pg "$pg"
}

# mean_head LOG: the mean of the `-P 1` TPS over the first $HEAD seconds.
mean_head() {
	awk -v h="$HEAD" '/^progress: / { t = $2 + 0; if (t <= h) { s += $4; n++ } } END { if (n) printf "%.1f", s / n; else print "n/a" }' "$1"
}

# cold_on FS [FLAGS...]: makes FS cold (see the header); neonfs comes back
# mounted, with FLAGS.
cold_on() {
	if [ "$1" = neonfs ]; then
		if [ -n "$DAEMON_PID" ]; then stop_neonfs; fi
		drop_caches
		shift
		mount_neonfs "cold-$ROUND" "$@"
	else
		drop_caches
	fi
}

pgdata_of() { if [ "$1" = neonfs ]; then echo "$PG"; else echo "$NPG"; fi; }

# select_cold FS: (a); sets TPS[FS,ROUND] and HEADTPS[FS,ROUND].
declare -A TPS HEADTPS
select_cold() {
	local fs=$1 pg log=$LOGS/pgbench-$1-$ROUND.log extra=""
	pg=$(pgdata_of "$fs")
	if [ "$fs" = neonfs ]; then extra="-c wal_sync_method=$NEONFS_WAL_SYNC"; fi
	cold_on "$fs"
	start_pg "$pg" "${PORT[$fs]}" "$fs" "$extra"
	echo "bench[$fs]: round $ROUND: select-only from cold for ${DURATION}s" >&2
	as_postgres timeout $((DURATION + 600)) "$PGBIN/pgbench" -h "$SOCK" -p "${PORT[$fs]}" -U postgres \
		-S -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -P 1 postgres >"$log" 2>&1 || die "pgbench -S on $fs failed; see $log"
	stop_pg "$pg"
	if [ "$fs" = neonfs ]; then stop_neonfs; fi
	TPS[$fs,$ROUND]=$(awk '/^tps = /{print $3; exit}' "$log")
	[ -n "${TPS[$fs,$ROUND]}" ] || die "no tps in $log"
	HEADTPS[$fs,$ROUND]=$(mean_head "$log")
	echo "bench[$fs]: round $ROUND: ${TPS[$fs,$ROUND]} tps (first ${HEAD}s: ${HEADTPS[$fs,$ROUND]})" >&2
}

# daemon_reads PORT: "count seconds" of the FUSE READs the daemon answered.
daemon_reads() {
	curl -sf "http://127.0.0.1:$1/metrics" | awk '
		/^neonfs_fuse_requests_total\{op="READ"\}/ { n = $2 }
		/^neonfs_fuse_request_seconds_total\{op="READ"\}/ { s = $2 }
		END { print n + 0, s + 0 }'
}

# read_cold FS: (b); sets MED, P90, MEAN, FIRST, FIRSTK [FS,ROUND] and, on
# neonfs, DMEAN[ROUND] (the daemon's mean µs per READ).
declare -A MED P90 MEAN FIRST FIRSTK DMEAN
read_cold() {
	local fs=$1 pg out port n0 s0 n1 s1
	pg=$(pgdata_of "$fs")
	if [ "$fs" = neonfs ]; then
		port=$(free_port)
		cold_on "$fs" --metrics "127.0.0.1:$port"
		read -r n0 s0 < <(daemon_reads "$port")
	else
		cold_on "$fs"
	fi
	out=$("$WORK/coldread" -n "$READS" -seed "$ROUND" "$pg/${RELFILE[$fs]}") || die "coldread on $fs failed"
	echo "$out" >>"$LOGS/coldread-$fs.log"
	if [ "$fs" = neonfs ]; then
		read -r n1 s1 < <(daemon_reads "$port")
		DMEAN[$ROUND]=$(awk -v n="$((n1 - n0))" -v s0="$s0" -v s1="$s1" 'BEGIN { if (n > 0) printf "%.1f", (s1 - s0) / n * 1e6; else print "n/a" }')
		stop_neonfs
	fi
	kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$out"; }
	MED[$fs,$ROUND]=$(kv median_us)
	P90[$fs,$ROUND]=$(kv p90_us)
	MEAN[$fs,$ROUND]=$(kv mean_us)
	FIRST[$fs,$ROUND]=$(kv first_us)
	FIRSTK[$fs,$ROUND]=$(kv 'first[0-9]*_median_us')
	echo "bench[$fs]: round $ROUND: cold 8 KiB read: $out" >&2
}

# ==========================================================================
go build -o "$WORK/coldread" ./bench/coldread
neonfs_binary "$WORK"

mkdir -m 0755 "$WORK/native"
PORT[native]=$(free_port)
load native "$NPG" "${PORT[native]}"

"$BIN" init --data "$VOL" >"$LOGS/neonfs-init.log" 2>&1 || die "neonfs init failed; see $LOGS/neonfs-init.log"
mkdir -m 0755 "$MNT"
mount_neonfs load
PORT[neonfs]=$(free_port)
load neonfs "$PG" "${PORT[neonfs]}" "-c wal_sync_method=$NEONFS_WAL_SYNC"
DB_BYTES=$(du -sb "$NPG" | cut -f1)
REL_BYTES=$(stat -c %s "$NPG/${RELFILE[native]}")
echo "bench[neonfs]: stopping the daemon (it flushes the memtable into layers)" >&2
stop_neonfs
mount_neonfs status
LAYERS=$("$BIN" status --data "$VOL" --json | jq -r '"\(.layers) layers, \(.layer_bytes / 1048576 | floor) MiB, read depth \(.read_depth)"')
echo "bench[neonfs]: $LAYERS" >&2
stop_neonfs

for ROUND in $(seq 1 "$ROUNDS"); do
	if [ $((ROUND % 2)) -eq 1 ]; then order=(native neonfs); else order=(neonfs native); fi
	for fs in "${order[@]}"; do select_cold "$fs"; done
	for fs in "${order[@]}"; do read_cold "$fs"; done
done

# ==========================================================================
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
spread() { printf '%s\n' "$@" | sort -g | sed -n '1p;$p' | paste -sd' '; }

echo
echo "cold reads, native ext4 vs neonfs (local object store; flags '${NEONFS_ARGS}')"
echo "pgbench scale $SCALE (database $((DB_BYTES >> 20)) MiB; pgbench_accounts file $((REL_BYTES >> 20)) MiB), neonfs: $LAYERS"
echo "(a) pgbench -S -c $CLIENTS -j $JOBS -T $DURATION from a cold start (tps; head = mean tps of the first ${HEAD}s)"
echo "(b) $READS single 8 KiB preads at random offsets of pgbench_accounts, POSIX_FADV_RANDOM, from a cold start (µs)"
printf '%-6s | %9s %9s %7s | %8s %8s %7s | %8s %8s %8s %8s %7s\n' round \
	tps-n tps-f ratio head-n head-f ratio med-n med-f p90-n p90-f ratio
declare -A L
for r in $(seq 1 "$ROUNDS"); do
	tr=$(ratio "${TPS[neonfs,$r]}" "${TPS[native,$r]}")
	hr=$(ratio "${HEADTPS[neonfs,$r]}" "${HEADTPS[native,$r]}")
	mr=$(ratio "${MED[neonfs,$r]}" "${MED[native,$r]}")
	L[tps-n]+=" ${TPS[native,$r]}" L[tps-f]+=" ${TPS[neonfs,$r]}" L[tr]+=" $tr"
	L[head-n]+=" ${HEADTPS[native,$r]}" L[head-f]+=" ${HEADTPS[neonfs,$r]}" L[hr]+=" $hr"
	L[med-n]+=" ${MED[native,$r]}" L[med-f]+=" ${MED[neonfs,$r]}" L[mr]+=" $mr"
	L[p90-n]+=" ${P90[native,$r]}" L[p90-f]+=" ${P90[neonfs,$r]}"
	L[mean-n]+=" ${MEAN[native,$r]}" L[mean-f]+=" ${MEAN[neonfs,$r]}" L[dmean]+=" ${DMEAN[$r]}"
	L[f100-n]+=" ${FIRSTK[native,$r]}" L[f100-f]+=" ${FIRSTK[neonfs,$r]}"
	L[one-n]+=" ${FIRST[native,$r]}" L[one-f]+=" ${FIRST[neonfs,$r]}"
	printf '%-6s | %9.1f %9.1f %7s | %8s %8s %7s | %8s %8s %8s %8s %7s\n' "$r" \
		"${TPS[native,$r]}" "${TPS[neonfs,$r]}" "$tr" "${HEADTPS[native,$r]}" "${HEADTPS[neonfs,$r]}" "$hr" \
		"${MED[native,$r]}" "${MED[neonfs,$r]}" "${P90[native,$r]}" "${P90[neonfs,$r]}" "$mr"
done
# shellcheck disable=SC2086 # the lists are space-separated on purpose
printf '%-6s | %9.1f %9.1f %7.3f | %8.1f %8.1f %7.3f | %8.1f %8.1f %8.1f %8.1f %7.3f\n' median \
	"$(median ${L[tps-n]})" "$(median ${L[tps-f]})" "$(median ${L[tr]})" \
	"$(median ${L[head-n]})" "$(median ${L[head-f]})" "$(median ${L[hr]})" \
	"$(median ${L[med-n]})" "$(median ${L[med-f]})" "$(median ${L[p90-n]})" "$(median ${L[p90-f]})" "$(median ${L[mr]})"
echo "(-n native, -f neonfs; ratio neonfs/native: for tps higher is better, for read latency lower)"
echo
echo "(b) in detail, µs: mean per read (native, neonfs), the neonfs daemon's own mean per FUSE READ (the rest"
echo "of neonfs's mean is FUSE and the kernel), median of the first 100 reads, the very first read (on"
echo "neonfs it opens the layers)"
printf '%-6s | %8s %8s %8s | %8s %8s | %8s %8s\n' round mean-n mean-f daemon f100-n f100-f first-n first-f
for r in $(seq 1 "$ROUNDS"); do
	printf '%-6s | %8s %8s %8s | %8s %8s | %8s %8s\n' "$r" "${MEAN[native,$r]}" "${MEAN[neonfs,$r]}" "${DMEAN[$r]}" \
		"${FIRSTK[native,$r]}" "${FIRSTK[neonfs,$r]}" "${FIRST[native,$r]}" "${FIRST[neonfs,$r]}"
done
# shellcheck disable=SC2086
printf '%-6s | %8.1f %8.1f %8.1f | %8.1f %8.1f | %8.1f %8.1f\n' median "$(median ${L[mean-n]})" "$(median ${L[mean-f]})" \
	"$(median ${L[dmean]})" "$(median ${L[f100-n]})" "$(median ${L[f100-f]})" "$(median ${L[one-n]})" "$(median ${L[one-f]})"
echo
# shellcheck disable=SC2086
{
	echo "per-round ratio spread (min max), select-only tps neonfs/native: $(spread ${L[tr]})"
	echo "per-round ratio spread (min max), first ${HEAD}s tps neonfs/native: $(spread ${L[hr]})"
	echo "per-round ratio spread (min max), cold read median neonfs/native: $(spread ${L[mr]})"
}
