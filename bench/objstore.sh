#!/usr/bin/env bash
# neonfs with its layers in S3: select-only TPS cold (empty layer cache) and
# warm against native ext4, what a branch with a 1% rewrite costs in the
# object store, and how many layers a read consults before and after gc.
#
#   sudo bench/objstore.sh
#   sudo SCALE=2 DURATION=5 bench/objstore.sh   # quick check
#
# 1. Native ext4: initdb, `pgbench -i -s $SCALE`; stop Postgres, drop the
#    page cache, start it, time to the first `SELECT 1`; select-only
#    (`-S -c $CLIENTS -j $JOBS -T $DURATION`) twice: cold, then warm.
# 2. neonfs on S3: a versitygw server (posix backend) on 127.0.0.1 with a
#    fresh bucket; `neonfs init --s3`, mount (the daemon), initdb,
#    `pgbench -i`, stop Postgres, unmount (the daemon flushes everything to
#    S3 and exits).
# 3. Cold and warm: remove the layer cache (DATA/cache), drop the page
#    cache, mount, start Postgres, time to the first `SELECT 1`; select-only
#    cold (includes warming the cache from S3), then warm. The layer cache
#    counters come from `neonfs status --json` after each step.
# 4. Branch cost: stop main's Postgres (so what the bucket gains is the
#    branch's alone; main stays mounted), `neonfs gc`, note the bucket size;
#    `neonfs branch create b1`, mount b1 (handed to the daemon), Postgres on
#    it, UPDATE 1% of pgbench_accounts: REWRITE=contiguous (default) updates
#    aid <= rows/100, REWRITE=scattered updates aid % 100 = 0 (a row in
#    most pages, so most pages get rewritten: Postgres's worst case),
#    CHECKPOINT, stop, unmount b1; `neonfs gc` again; report the bucket
#    before and after and `neonfs branch list --json` per branch.
# 5. Read depth: `layers` and `read_depth` from `neonfs status --json`
#    before and after each `neonfs gc` (full merge).
#
# Everything (Postgres servers, the daemon, mounts, versitygw, the temp dir)
# is cleaned up on exit; on failure the tails of the logs are printed.
#
# Environment: SCALE (20), REWRITE (contiguous), CLIENTS (4), JOBS (2), DURATION (30),
# NEONFS_BIN (build from the repo), PGBIN (/usr/lib/postgresql/15/bin),
# NEONFS_VERSITYGW (versitygw in PATH or $(go env GOPATH)/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALE=${SCALE:-20}
REWRITE=${REWRITE:-contiguous}
case $REWRITE in
contiguous) WHERE="aid <= $((SCALE * 1000))" ;;
scattered) WHERE="aid % 100 = 0" ;;
*) echo "bench: REWRITE must be contiguous or scattered, got $REWRITE" >&2; exit 2 ;;
esac
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
DURATION=${DURATION:-30}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BUCKET=neonfs-bench
REGION=us-east-1

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts a file system, drops the page cache and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb pg_ctl pgbench psql
need_tools curl jq
for v in SCALE CLIENTS JOBS DURATION; do
	[ "${!v}" -ge 1 ] 2>/dev/null || { echo "bench: $v=${!v}: want a positive count" >&2; exit 1; }
done

if [ -n "${NEONFS_VERSITYGW:-}" ]; then
	VGW=$NEONFS_VERSITYGW
elif command -v versitygw >/dev/null; then
	VGW=$(command -v versitygw)
else
	VGW=$(go env GOPATH 2>/dev/null | cut -d: -f1)/bin/versitygw
fi
[ -x "$VGW" ] || { echo "bench: versitygw not found (\$NEONFS_VERSITYGW, PATH, $VGW); go install github.com/versity/versitygw/cmd/versitygw@v1.8.0" >&2; exit 1; }

bench_workdir objstore-bench

DATA=$WORK/volume
MNT=$WORK/mnt
MNT2=$WORK/b1
S3ROOT=$WORK/s3root
DAEMON_PID=""
DAEMON_LOG="" # the running (or last) daemon's
VGW_PID=""
PGDATAS=()

# log_tails: for a failure, the end of the logs written last (the step
# that failed and what served it: the daemon, Postgres, versitygw).
log_tails() {
	local f seen=" "
	for f in $DAEMON_LOG $(ls -t "$LOGS" 2>/dev/null | head -n 4 | sed "s|^|$LOGS/|"); do
		[ -s "$f" ] && [[ $seen != *" $f "* ]] || continue
		seen+="$f "
		echo "---- $f (last 30 lines)" >&2
		tail -n 30 "$f" >&2
	done
}

cleanup() {
	local rc=$? i
	set +e
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
		echo "bench: failed (exit $rc); logs:" >&2
		log_tails
	fi
	for ((i = ${#PGDATAS[@]} - 1; i >= 0; i--)); do stop_postgres "${PGDATAS[i]}"; done
	if [ -n "$DAEMON_PID" ]; then
		stop_pid "$DAEMON_PID"
		wait "$DAEMON_PID" 2>/dev/null
	fi
	if [ -n "$VGW_PID" ]; then
		stop_pid "$VGW_PID"
		wait "$VGW_PID" 2>/dev/null
	fi
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench: $*" >&2; exit 1; }


tps_of() { awk '/^tps = /{print $3; exit}' "$1"; }

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || echo "bench: warning: could not drop the page cache" >&2
}

psql_at() { as_postgres timeout 600 "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$SOCK" -p "$1" -U postgres -d postgres -c "$2"; }

# first_select PORT: waits (up to 120s) for `SELECT 1` to succeed.
first_select() {
	local i
	for i in $(seq 1 1200); do
		if as_postgres timeout 30 "$PGBIN/psql" -X -q -A -t -h "$SOCK" -p "$1" -U postgres -d postgres -c "SELECT 1" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	die "no answer to SELECT 1 on port $1 within 120s"
}

# pgbench_at PORT LOG ARGS...: runs pgbench, output in LOG.
pgbench_at() {
	local port=$1 log=$2
	shift 2
	as_postgres timeout $((DURATION + 600)) "$PGBIN/pgbench" -h "$SOCK" -p "$port" -U postgres "$@" postgres >"$log" 2>&1 ||
		die "pgbench $* failed; see $log"
}

# init_pgbench PGDATA LABEL PORT: initdb, start Postgres and load pgbench
# scale $SCALE; sets INIT_MS to the load's time.
init_pgbench() {
	local pg=$1 label=$2 port=$3 t0
	mkdir -m 0700 "$pg"
	chown postgres:postgres "$pg"
	PGDATAS+=("$pg")
	echo "bench[$label]: initdb and pgbench -i -s $SCALE" >&2
	as_postgres "$PGBIN/initdb" -D "$pg" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
	pg_start "$pg" "$LOGS/postgres-$label.log" "$port"
	t0=$(now_ms)
	pgbench_at "$port" "$LOGS/pgbench-$label-init.log" -i -s "$SCALE" -q
	INIT_MS=$(($(now_ms) - t0))
}

# select_only LABEL PORT: sets TPS.
select_only() {
	local log=$LOGS/pgbench-$1.log
	echo "bench[$1]: select-only for ${DURATION}s" >&2
	pgbench_at "$2" "$log" -S -c "$CLIENTS" -j "$JOBS" -T "$DURATION"
	TPS=$(tps_of "$log")
	[ -n "$TPS" ] || die "no tps in $log"
	echo "bench[$1]: $TPS tps" >&2
}

# --- S3 -------------------------------------------------------------------

S3_ACCESS=neonfs$(head -c 7 /dev/urandom | od -An -tx1 | tr -d ' \n')
S3_SECRET=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
S3_CREDS=$WORK/s3-credentials
(umask 077 && printf 'access_key_id=%s\nsecret_access_key=%s\n' "$S3_ACCESS" "$S3_SECRET" >"$S3_CREDS")

# s3_curl ARGS...: a signed request; the credentials go through stdin, not
# the command line.
s3_curl() {
	printf 'user = "%s:%s"\n' "$S3_ACCESS" "$S3_SECRET" |
		curl -sS --max-time 30 --config - --aws-sigv4 "aws:amz:$REGION:s3" \
			-H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" "$@"
}

start_s3() {
	local code
	mkdir -m 0700 "$S3ROOT"
	S3_PORT=$(free_port)
	# Credentials in the environment, the rest of it left out (as s3test does).
	env -i PATH="$PATH" HOME="$HOME" ROOT_ACCESS_KEY_ID="$S3_ACCESS" ROOT_SECRET_ACCESS_KEY="$S3_SECRET" \
		"$VGW" --port "127.0.0.1:$S3_PORT" --quiet posix "$S3ROOT" >"$LOGS/versitygw.log" 2>&1 &
	VGW_PID=$!
	for _ in $(seq 1 150); do
		kill -0 "$VGW_PID" 2>/dev/null || die "versitygw exited"
		# Any HTTP answer (an anonymous request is refused) means it listens.
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$S3_PORT/" || true)
		[ "$code" != 000 ] && break
		sleep 0.1
	done
	[ "$code" != 000 ] || die "versitygw on 127.0.0.1:$S3_PORT: no answer within 15s"
	code=$(s3_curl -o "$LOGS/create-bucket.xml" -w '%{http_code}' -X PUT "http://127.0.0.1:$S3_PORT/$BUCKET")
	[ "$code" = 200 ] || die "create bucket $BUCKET: HTTP $code: $(cat "$LOGS/create-bucket.xml")"
	echo "bench: versitygw on 127.0.0.1:$S3_PORT, bucket $BUCKET" >&2
}

# bucket_bytes: total size of the bucket's objects, as the posix backend
# stores them (one file per object; versitygw's temp dir left out).
bucket_bytes() { find "$S3ROOT/$BUCKET" -path '*/.sgwtmp' -prune -o -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
bucket_objects() { find "$S3ROOT/$BUCKET" -path '*/.sgwtmp' -prune -o -type f -print | wc -l; }

# --- neonfs ---------------------------------------------------------------

nfs() { timeout 1800 "$BIN" "$@"; }

status_json() { nfs status --data "$DATA" --json; }

# mount_main LOGNAME: starts the daemon with main at $MNT; sets MOUNT_MS.
mount_main() {
	local log=$LOGS/neonfs-$1.log t0
	DAEMON_LOG=$log
	t0=$(now_ms)
	"$BIN" mount --data "$DATA" "$MNT" >"$log" 2>&1 &
	DAEMON_PID=$!
	wait_mounted "$MNT" "$DAEMON_PID" "$log" 120
	MOUNT_MS=$(($(now_ms) - t0))
}

# unmount_main: unmounts main, the last mount, and waits (up to 10 minutes)
# for the daemon to flush and exit.
unmount_main() {
	nfs unmount --data "$DATA" "$MNT" >/dev/null
	for _ in $(seq 1 6000); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$DAEMON_PID" 2>/dev/null && die "neonfs daemon still running 10 minutes after its last unmount"
	wait "$DAEMON_PID" || die "neonfs daemon exited with status $? after its last unmount"
	DAEMON_PID=""
}

# cache_stats LABEL: records the layer cache counters.
declare -A LC_HITS LC_MISSES LC_BYTES
cache_stats() {
	local st
	st=$(status_json)
	LC_HITS[$1]=$(jq -r '.layer_cache.hits // "n/a"' <<<"$st")
	LC_MISSES[$1]=$(jq -r '.layer_cache.misses // "n/a"' <<<"$st")
	LC_BYTES[$1]=$(jq -r '.layer_cache.bytes // "n/a"' <<<"$st")
}

# depth LABEL: records layers and read depth.
declare -A LAYERS DEPTH OBJ_BYTES
depth() {
	local st
	st=$(status_json)
	LAYERS[$1]=$(jq -r .layers <<<"$st")
	DEPTH[$1]=$(jq -r .read_depth <<<"$st")
	OBJ_BYTES[$1]=$(jq -r .object_bytes <<<"$st")
}

run_gc() {
	local out
	echo "bench: neonfs gc" >&2
	out=$(nfs gc --data "$DATA" --json 2>>"$LOGS/gc.log") || die "neonfs gc failed"
	echo "bench: gc: $out" >&2
	echo "$out" >>"$LOGS/gc.log"
}

# ==========================================================================
# 1. Native ext4.
mkdir -m 0755 "$WORK/native"
NPG=$WORK/native/pgdata
NPORT=$(free_port)
init_pgbench "$NPG" native "$NPORT"
NATIVE_INIT_MS=$INIT_MS
DB_SIZE=$(psql_at "$NPORT" "SELECT pg_database_size('postgres')")
pg_stop "$NPG"
drop_caches
t0=$(now_ms)
pg_start "$NPG" "$LOGS/postgres-native.log" "$NPORT"
first_select "$NPORT"
NATIVE_FIRST_MS=$(($(now_ms) - t0))
select_only native-cold "$NPORT"
NATIVE_COLD=$TPS
select_only native-warm "$NPORT"
NATIVE_WARM=$TPS
pg_stop "$NPG"
PGDATAS=()
rm -rf "$WORK/native"

# ==========================================================================
# 2. neonfs on S3: load.
neonfs_binary "$WORK"
start_s3
nfs init --data "$DATA" --s3 "s3://$BUCKET/vol" --s3-endpoint "127.0.0.1:$S3_PORT" --s3-tls=false \
	--s3-credentials "$S3_CREDS" >"$LOGS/neonfs-init.log" 2>&1 || die "neonfs init failed"
mkdir -m 0755 "$MNT" "$MNT2"
mount_main load
PG=$MNT/pgdata
PORT=$(free_port)
init_pgbench "$PG" neonfs "$PORT"
NEONFS_INIT_MS=$INIT_MS
pg_stop "$PG"
echo "bench[neonfs]: init took ${NEONFS_INIT_MS} ms; unmounting (flush to S3)" >&2
t0=$(now_ms)
unmount_main
UNMOUNT_MS=$(($(now_ms) - t0))
LOAD_BUCKET_BYTES=$(bucket_bytes)
LOAD_BUCKET_OBJECTS=$(bucket_objects)
echo "bench[neonfs]: unmount took ${UNMOUNT_MS} ms; bucket: $LOAD_BUCKET_OBJECTS objects, $LOAD_BUCKET_BYTES bytes" >&2

# ==========================================================================
# 3. Cold, then warm.
rm -rf "$DATA/cache"
drop_caches
echo "bench[neonfs]: cold mount (no layer cache, no page cache)" >&2
t0=$(now_ms)
mount_main cold
COLD_MOUNT_MS=$MOUNT_MS
t1=$(now_ms)
pg_start "$PG" "$LOGS/postgres-neonfs.log" "$PORT"
t2=$(now_ms)
first_select "$PORT"
t3=$(now_ms)
COLD_PGSTART_MS=$((t2 - t1)) COLD_SELECT_MS=$((t3 - t2)) NEONFS_FIRST_MS=$((t3 - t0))
echo "bench[neonfs]: first SELECT 1 after ${NEONFS_FIRST_MS} ms (mount $COLD_MOUNT_MS, pg start $COLD_PGSTART_MS, query $COLD_SELECT_MS)" >&2
cache_stats start
select_only neonfs-cold "$PORT"
NEONFS_COLD=$TPS
cache_stats cold
select_only neonfs-warm "$PORT"
NEONFS_WARM=$TPS
cache_stats warm

# ==========================================================================
# 4 and 5. Branch cost and read depth. Main's Postgres stops first, so what
# the bucket gains from here on is the branch's.
pg_stop "$PG"
depth pre-gc1
run_gc
depth post-gc1
BEFORE_BUCKET_BYTES=$(bucket_bytes)
BEFORE_BUCKET_OBJECTS=$(bucket_objects)

echo "bench[branch]: create b1, mount it, UPDATE 1% of pgbench_accounts" >&2
nfs branch create --data "$DATA" b1 >/dev/null
nfs mount --data "$DATA" --branch b1 "$MNT2" >/dev/null
BPG=$MNT2/pgdata
PGDATAS+=("$BPG")
BPORT=$(free_port)
pg_start "$BPG" "$LOGS/postgres-b1.log" "$BPORT"
UPDATED=$(psql_at "$BPORT" "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE $WHERE RETURNING 1) SELECT count(*) FROM u")
PAGES=$(psql_at "$BPORT" "SELECT relpages FROM pg_class WHERE relname = 'pgbench_accounts'")
psql_at "$BPORT" "CHECKPOINT" >/dev/null
pg_stop "$BPG"
unset 'PGDATAS[-1]'
nfs unmount --data "$DATA" "$MNT2" >/dev/null
echo "bench[branch]: updated $UPDATED rows; b1 unmounted" >&2

depth pre-gc2
run_gc
depth post-gc2
AFTER_BUCKET_BYTES=$(bucket_bytes)
AFTER_BUCKET_OBJECTS=$(bucket_objects)
BRANCHES=$(nfs branch list --data "$DATA" --json)
echo "$BRANCHES" >"$LOGS/branches.json"
main_logical=$(jq -r '.[] | select(.name == "main") | .logical_bytes' <<<"$BRANCHES")
main_unique=$(jq -r '.[] | select(.name == "main") | .unique_bytes' <<<"$BRANCHES")
b1_logical=$(jq -r '.[] | select(.name == "b1") | .logical_bytes' <<<"$BRANCHES")
b1_unique=$(jq -r '.[] | select(.name == "b1") | .unique_bytes' <<<"$BRANCHES")

t0=$(now_ms)
unmount_main
FINAL_UNMOUNT_MS=$(($(now_ms) - t0))
PGDATAS=()
FINAL_BUCKET_BYTES=$(bucket_bytes)

# ==========================================================================
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
mib() { awk -v n="$1" 'BEGIN { if (n ~ /^[0-9]+$/) printf "%.1f MiB", n / 1048576; else print n }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "n/a" }'; }

echo
echo "neonfs on S3 (versitygw posix backend on 127.0.0.1) vs native ext4"
echo "pgbench scale $SCALE (database $(mib "$DB_SIZE")), $CLIENTS clients, $JOBS threads, ${DURATION}s per select-only run"
printf '%-34s %12s %12s %14s\n' workload native neonfs neonfs/native
printf '%-34s %12.1f %12.1f %14s\n' "pgbench -i (s)" "$(awk -v m="$NATIVE_INIT_MS" 'BEGIN{print m/1000}')" \
	"$(awk -v m="$NEONFS_INIT_MS" 'BEGIN{print m/1000}')" "$(ratio "$NEONFS_INIT_MS" "$NATIVE_INIT_MS")"
printf '%-34s %12s %12s %14s\n' "first SELECT 1, cold (ms)" "$NATIVE_FIRST_MS" "$NEONFS_FIRST_MS" "$(ratio "$NEONFS_FIRST_MS" "$NATIVE_FIRST_MS")"
printf '%-34s %12.1f %12.1f %14s\n' "select-only cold (tps)" "$NATIVE_COLD" "$NEONFS_COLD" "$(ratio "$NEONFS_COLD" "$NATIVE_COLD")"
printf '%-34s %12.1f %12.1f %14s\n' "select-only warm (tps)" "$NATIVE_WARM" "$NEONFS_WARM" "$(ratio "$NEONFS_WARM" "$NATIVE_WARM")"
echo "(native cold: Postgres restarted after dropping the page cache; neonfs cold: also DATA/cache removed,"
echo " first SELECT 1 = mount $COLD_MOUNT_MS ms + pg start $COLD_PGSTART_MS ms + query $COLD_SELECT_MS ms;"
echo " unmount after load, flushing to S3: $UNMOUNT_MS ms)"

echo
echo "layer cache (DATA/cache, chunks)"
printf '%-34s %10s %10s %14s\n' after hits misses bytes
printf '%-34s %10s %10s %14s\n' "cold mount + first SELECT 1" "${LC_HITS[start]}" "${LC_MISSES[start]}" "$(mib "${LC_BYTES[start]}")"
printf '%-34s %10s %10s %14s\n' "cold select-only" "${LC_HITS[cold]}" "${LC_MISSES[cold]}" "$(mib "${LC_BYTES[cold]}")"
printf '%-34s %10s %10s %14s\n' "warm select-only" "${LC_HITS[warm]}" "${LC_MISSES[warm]}" "$(mib "${LC_BYTES[warm]}")"

echo
echo "object store: branch b1 after updating $UPDATED of $((SCALE * 100000)) pgbench_accounts rows (table: $PAGES pages), CHECKPOINT"
printf '%-34s %10s %14s\n' "" objects bytes
printf '%-34s %10s %14s\n' "bucket after load (unmounted)" "$LOAD_BUCKET_OBJECTS" "$(mib "$LOAD_BUCKET_BYTES")"
printf '%-34s %10s %14s\n' "bucket before branch (after gc)" "$BEFORE_BUCKET_OBJECTS" "$(mib "$BEFORE_BUCKET_BYTES")"
printf '%-34s %10s %14s\n' "bucket after branch (after gc)" "$AFTER_BUCKET_OBJECTS" "$(mib "$AFTER_BUCKET_BYTES")"
printf '%-34s %10s %14s   %s of the bucket before\n' "branch cost (difference)" "" \
	"$(mib $((AFTER_BUCKET_BYTES - BEFORE_BUCKET_BYTES)))" "$(pct $((AFTER_BUCKET_BYTES - BEFORE_BUCKET_BYTES)) "$BEFORE_BUCKET_BYTES")"
printf '%-34s %10s %14s\n' "bucket after final unmount" "" "$(mib "$FINAL_BUCKET_BYTES")"
printf '%-10s %14s %14s\n' branch logical unique
printf '%-10s %14s %14s\n' main "$(mib "$main_logical")" "$(mib "$main_unique")"
printf '%-10s %14s %14s   unique: %s of main'"'"'s\n' b1 "$(mib "$b1_logical")" "$(mib "$b1_unique")" "$(pct "$b1_unique" "$main_unique")"

echo
echo "layers a read consults (neonfs status: layers / read_depth)"
printf '%-34s %16s %16s\n' "" "before gc" "after gc"
printf '%-34s %16s %16s\n' "after load and the select-only runs" "${LAYERS[pre-gc1]} / ${DEPTH[pre-gc1]}" "${LAYERS[post-gc1]} / ${DEPTH[post-gc1]}"
printf '%-34s %16s %16s\n' "after the branch work" "${LAYERS[pre-gc2]} / ${DEPTH[pre-gc2]}" "${LAYERS[post-gc2]} / ${DEPTH[post-gc2]}"
