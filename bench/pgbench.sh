#!/usr/bin/env bash
# pgbench on native ext4, on a plain go-fuse loopback and on neonfs, in one
# run, with the ratios.
#
#   sudo bench/pgbench.sh
#   sudo ROUNDS=1 DURATION=10 bench/pgbench.sh   # quick check
#   sudo LOOPBACK=0 bench/pgbench.sh             # native and neonfs only
#   sudo NEONFS_B_ARGS="--wal-direct-io" NEONFS_B_WAL_SYNC=fdatasync \
#       bench/pgbench.sh                         # A/B two neonfs settings
#   sudo NEONFS_B_BIN=/tmp/neonfs-main bench/pgbench.sh  # A/B two builds
#   sudo FLOOR=1 bench/pgbench.sh               # also native, loopback, neonfs on tmpfs
#
# The loopback (bench/loopback) passes every request straight to a
# directory on the same disk, mounted with neonfs's FUSE options (writeback
# cache, xattrs off, long timeouts): it is the floor FUSE itself sets, so
# neonfs/loopback is what neonfs's own work (the log, the block map) costs.
#
# neonfs runs Postgres with wal_sync_method=$NEONFS_WAL_SYNC (fdatasync,
# Postgres's default, as its endpoints do). Native ext4 also runs with
# open_datasync when NATIVE_ODS=1 ("native-ods"), and the headline ratio
# is against the faster of the two in each round ("native-best"): when
# neonfs runs open_datasync (with --wal-direct-io, one FUSE round trip per
# WAL flush, see fusefs walFile), every file system gets its own fastest
# method.
#
# FLOOR=1 adds Postgres on a tmpfs ("native-tmpfs") and the loopback over a
# tmpfs directory ("loopback-tmpfs"): storage that costs nothing and keeps
# nothing, so loopback-tmpfs/native-tmpfs is what FUSE alone (the kernel's
# round trips and a go-fuse daemon) costs, and loopback-tmpfs/native is
# about the most a go-fuse file system could reach against ext4 here if
# its storage cost nothing. It also adds neonfs with its volume (the log
# and the layers) on a tmpfs ("neonfs-tmpfs"): neonfs's engine without
# the disk's waits, so neonfs-tmpfs/loopback-tmpfs is what the engine's
# work costs over a plain loopback's, and neonfs/neonfs-tmpfs what
# waiting for the disk does.
#
# Each file system gets initdb, `pgbench -i -s $SCALE` (timed: the "first
# load" line, one run each, on a fresh file system), CHECKPOINT, and its
# writes settled (sync; on neonfs, until no flush or merge runs). Then,
# for each of $ROUNDS rounds, TPC-B (`-c
# $CLIENTS -j $JOBS -T $DURATION`) and select-only (`-S`, same options) run
# on every file system, the order rotating between rounds, each run after
# the file systems settle again. All Postgres servers stay up; only one runs
# a workload at a time. Throughput on these shared machines swings by 20%
# between identical runs, so the ratios reported are the medians of the
# per-round ratios; the spread of the per-round ratios is printed too,
# since one round can land 0.1 off. After the workloads, $INIT_ROUNDS
# rounds of `pgbench -i` again (it drops and reloads the tables), the
# order rotating, each after the file systems settle: the "pgbench -i"
# lines are their medians. Each workload run also counts CPU time per
# transaction (the machine's busy time from /proc/stat, and the daemon's
# for loopback and neonfs): the last lines are its medians. Everything
# lives in a temp dir under /var/tmp; neonfs builds the binary (or uses
# $NEONFS_BIN). Everything (Postgres, the daemons, the mounts, the temp
# dir) is cleaned up on exit.
#
# Environment: SCALE (20), CLIENTS (4), JOBS (2), DURATION (30), ROUNDS (5),
# INIT_ROUNDS (3),
# LOOPBACK (1), NATIVE_ODS (0; 1: also native with open_datasync), FLOOR
# (0; 1: also native-tmpfs, loopback-tmpfs and neonfs-tmpfs),
# NEONFS_ARGS (extra `neonfs mount` flags), NEONFS_WAL_SYNC
# (fdatasync), NEONFS_B_ARGS / NEONFS_B_WAL_SYNC / NEONFS_B_BIN (when any
# is set, a second neonfs volume "neonfs-b" runs with them beside the
# first, NEONFS_B_BIN being its binary),
# PG_EXTRA (more postgres options for every server, e.g. "-c
# checkpoint_timeout=30s" for a checkpoint-heavy run), NEONFS_BIN (build
# from the repo), PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-5}
INIT_ROUNDS=${INIT_ROUNDS:-3}
LOOPBACK=${LOOPBACK:-1}
NATIVE_ODS=${NATIVE_ODS:-0}
FLOOR=${FLOOR:-0}
NEONFS_ARGS=${NEONFS_ARGS:-}
NEONFS_WAL_SYNC=${NEONFS_WAL_SYNC:-fdatasync}
NEONFS_B_ARGS=${NEONFS_B_ARGS:-}
NEONFS_B_WAL_SYNC=${NEONFS_B_WAL_SYNC:-}
NEONFS_B_BIN=${NEONFS_B_BIN:-}
PG_EXTRA=${PG_EXTRA:-}
AB=0
if [ -n "$NEONFS_B_ARGS" ] || [ -n "$NEONFS_B_WAL_SYNC" ] || [ -n "$NEONFS_B_BIN" ]; then
	AB=1
	NEONFS_B_WAL_SYNC=${NEONFS_B_WAL_SYNC:-$NEONFS_WAL_SYNC}
fi
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts file systems and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb pg_ctl pgbench

bench_workdir bench

DAEMON_PIDS=()
LOOP_PID=""
FLOOR_PID=""
LOOP_MNT=$WORK/loop-mnt
PGDATAS=()

cleanup() {
	local rc=$? d
	set +e
	for d in "${PGDATAS[@]}"; do stop_postgres "$d"; done
	for d in "${DAEMON_PIDS[@]}"; do stop_pid "$d"; done
	[ -n "$LOOP_PID" ] && stop_pid "$LOOP_PID"
	[ -n "$FLOOR_PID" ] && stop_pid "$FLOOR_PID"
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tps_of() { awk '/^tps = /{print $3; exit}'; }

declare -A PORT INIT

# load_on LABEL: `pgbench -i` on LABEL's server (it drops and reloads the
# tables), then CHECKPOINT; prints the seconds the load took.
load_on() {
	local t0 ms
	t0=$(now_ms)
	as_postgres "$PGBIN/pgbench" -h "$SOCK" -p "${PORT[$1]}" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
	ms=$(($(now_ms) - t0))
	as_postgres "$PGBIN/psql" -h "$SOCK" -p "${PORT[$1]}" -U postgres -X -q -c "CHECKPOINT" postgres >/dev/null
	awk -v ms="$ms" 'BEGIN { printf "%.2f", ms / 1000 }'
}

# setup_on LABEL DIR [WAL_SYNC]: a loaded, checkpointed database on DIR,
# left running, its Postgres with wal_sync_method=WAL_SYNC (fdatasync).
setup_on() {
	local label=$1 pgdata=$2/pgdata port
	mkdir "$pgdata"
	chown postgres:postgres "$pgdata"
	chmod 0700 "$pgdata"
	PGDATAS+=("$pgdata")
	port=$(free_port)
	PORT[$label]=$port
	echo "bench[$label]: initdb in $pgdata" >&2
	as_postgres "$PGBIN/initdb" -D "$pgdata" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
	pg_start "$pgdata" "$LOGS/$label-postgres.log" "$port" "-c wal_sync_method=${3:-fdatasync} $PG_EXTRA"
	echo "bench[$label]: pgbench -i -s $SCALE (wal_sync_method ${3:-fdatasync})" >&2
	INIT[$label]=$(load_on "$label")
	echo "bench[$label]: init took ${INIT[$label]}s" >&2
}

# settle: every file system quiet: a CHECKPOINT on every server (so no
# spread checkpoint of the previous run keeps writing through the next
# one, and every run starts from the same state), dirty pages written back
# (native, loopback) and no flush or merge running (neonfs).
settle() {
	local v fs
	for fs in "${FSES[@]}"; do
		as_postgres "$PGBIN/psql" -h "$SOCK" -p "${PORT[$fs]}" -U postgres -X -q -c "CHECKPOINT" postgres >/dev/null
	done
	sync
	for v in "$WORK"/volume*; do neonfs_settle "$BIN" "$v"; done
}

# DPID[LABEL]: the daemon serving LABEL's file system (none for native).
declare -A DPID
HZ=$(getconf CLK_TCK) # /proc's clock ticks per second

# busy_ticks: clock ticks every CPU spent busy so far (/proc/stat: all but
# idle and iowait).
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# proc_ticks PID: clock ticks PID has run, user and system (0 if none).
proc_ticks() {
	if [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ]; then
		# Fields counted after the command name, which may hold spaces.
		sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
	else
		echo 0
	fi
}

# run_on LABEL ARGS...: one timed pgbench run; prints its TPS, then the
# CPU time per transaction in microseconds, of the whole machine (every
# process and the kernel's work on their behalf) and of LABEL's daemon.
run_on() {
	local label=$1 out m0 m1 d0 d1 txns
	shift
	settle
	echo "bench[$label]: pgbench $* for ${DURATION}s" >&2
	m0=$(busy_ticks)
	d0=$(proc_ticks "${DPID[$label]:-}")
	out=$(as_postgres "$PGBIN/pgbench" -h "$SOCK" -p "${PORT[$label]}" -U postgres "$@" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" postgres 2>&1)
	m1=$(busy_ticks)
	d1=$(proc_ticks "${DPID[$label]:-}")
	txns=$(awk '/^number of transactions actually processed:/ { print $NF; exit }' <<<"$out")
	awk -v tps="$(tps_of <<<"$out")" -v n="${txns:-0}" -v m=$((m1 - m0)) -v d=$((d1 - d0)) -v hz="$HZ" \
		'BEGIN { if (n > 0) printf "%s %.0f %.0f\n", tps, m / hz * 1e6 / n, d / hz * 1e6 / n; else printf "%s 0 0\n", tps }'
}

# init_on LABEL: load_on once every file system is quiet.
init_on() {
	settle
	echo "bench[$1]: pgbench -i -s $SCALE" >&2
	load_on "$1"
}

FSES=(native)
mkdir -m 0755 "$WORK/native"
setup_on native "$WORK/native"
if [ "$NATIVE_ODS" = 1 ]; then
	mkdir -m 0755 "$WORK/native-ods"
	setup_on native-ods "$WORK/native-ods" open_datasync
	FSES+=(native-ods)
fi

if [ "$LOOPBACK" = 1 ]; then
	echo "bench: building bench/loopback" >&2
	go build -o "$WORK/loopback" ./bench/loopback
	mkdir -m 0755 "$WORK/loop-dir" "$LOOP_MNT"
	"$WORK/loopback" "$WORK/loop-dir" "$LOOP_MNT" >"$LOGS/loopback.log" 2>&1 &
	LOOP_PID=$!
	DPID[loopback]=$LOOP_PID
	wait_mounted "$LOOP_MNT" "$LOOP_PID" "$LOGS/loopback.log"
	setup_on loopback "$LOOP_MNT"
	FSES+=(loopback)
fi

# tmpfs_dir DIR: an 8 GiB tmpfs mounted on a new DIR.
tmpfs_dir() { mkdir -m 0755 "$1" && mount -t tmpfs -o size=8g,mode=0755 tmpfs "$1"; }

if [ "$FLOOR" = 1 ]; then
	tmpfs_dir "$WORK/native-tmpfs"
	setup_on native-tmpfs "$WORK/native-tmpfs"
	FSES+=(native-tmpfs)
	[ -x "$WORK/loopback" ] || go build -o "$WORK/loopback" ./bench/loopback
	tmpfs_dir "$WORK/floor-dir"
	mkdir -m 0755 "$WORK/floor-mnt"
	"$WORK/loopback" "$WORK/floor-dir" "$WORK/floor-mnt" >"$LOGS/loopback-tmpfs.log" 2>&1 &
	FLOOR_PID=$!
	DPID[loopback-tmpfs]=$FLOOR_PID
	wait_mounted "$WORK/floor-mnt" "$FLOOR_PID" "$LOGS/loopback-tmpfs.log"
	setup_on loopback-tmpfs "$WORK/floor-mnt"
	FSES+=(loopback-tmpfs)
fi

neonfs_binary "$WORK"
# neonfs_on LABEL ARGS WAL_SYNC [BIN]: a volume of its own, mounted with
# ARGS by BIN ($BIN).
neonfs_on() {
	local label=$1 mnt=$WORK/mnt-$1 pid bin=${4:-$BIN}
	"$bin" init --data "$WORK/volume-$label" >&2
	mkdir -m 0755 "$mnt"
	# shellcheck disable=SC2086 # ARGS are flags, split on purpose
	"$bin" mount --data "$WORK/volume-$label" $2 "$mnt" >"$LOGS/$label.log" 2>&1 &
	pid=$!
	DAEMON_PIDS+=("$pid")
	DPID[$label]=$pid
	wait_mounted "$mnt" "$pid" "$LOGS/$label.log"
	setup_on "$label" "$mnt" "$3"
	FSES+=("$label")
}
neonfs_on neonfs "$NEONFS_ARGS" "$NEONFS_WAL_SYNC"
if [ "$FLOOR" = 1 ]; then
	tmpfs_dir "$WORK/volume-neonfs-tmpfs"
	neonfs_on neonfs-tmpfs "$NEONFS_ARGS" "$NEONFS_WAL_SYNC"
fi
[ "$AB" = 1 ] && neonfs_on neonfs-b "$NEONFS_B_ARGS" "$NEONFS_B_WAL_SYNC" "${NEONFS_B_BIN:+$(realpath "$NEONFS_B_BIN")}"

# TPS[workload,fs,round], MCPU and DCPU (the machine's and the daemon's
# CPU microseconds per transaction); pgbench args per workload.
declare -A TPS MCPU DCPU
declare -A ARGS=([tpc-b]="" [select-only]="-S")
WORKLOADS=(tpc-b select-only)
n=${#FSES[@]}
for r in $(seq 1 "$ROUNDS"); do
	# Which file system goes first rotates: a run inherits the previous
	# one's warm CPU caches and kernel state.
	order=()
	for i in $(seq 0 $((n - 1))); do order+=("${FSES[$(((i + r - 1) % n))]}"); done
	line="bench: round $r/$ROUNDS:"
	for w in "${WORKLOADS[@]}"; do
		# shellcheck disable=SC2086 # ARGS is empty or one word
		for fs in "${order[@]}"; do
			read -r "TPS[$w,$fs,$r]" "MCPU[$w,$fs,$r]" "DCPU[$w,$fs,$r]" <<<"$(run_on "$fs" ${ARGS[$w]})"
		done
		for fs in "${FSES[@]}"; do line+=" $w $fs ${TPS[$w,$fs,$r]};"; done
		# The faster native of the round: each wal_sync_method at its best.
		best=${TPS[$w,native,$r]}
		if [ "$NATIVE_ODS" = 1 ]; then
			best=$(awk -v a="$best" -v b="${TPS[$w,native-ods,$r]}" 'BEGIN { print (b > a ? b : a) }')
		fi
		TPS[$w,native-best,$r]=$best
	done
	echo "$line" >&2
done

# INITS[fs,round]: seconds of one `pgbench -i`, rounds alternating like
# the workloads' (one load each on a fresh file system swings too much to
# compare: 6-10 s for the same neonfs binary). After the workloads, so
# they run on the state the first load left, as before these rounds.
declare -A INITS
n=${#FSES[@]}
for r in $(seq 1 "$INIT_ROUNDS"); do
	line="bench: init round $r/$INIT_ROUNDS:"
	for i in $(seq 0 $((n - 1))); do
		fs=${FSES[$(((i + r - 1) % n))]}
		INITS[$fs,$r]=$(init_on "$fs")
		line+=" $fs ${INITS[$fs,$r]};"
	done
	echo "$line" >&2
done

for d in "${PGDATAS[@]}"; do pg_stop "$d"; done
PGDATAS=()
for d in "${DAEMON_PIDS[@]}"; do
	kill -TERM "$d"
	if ! wait "$d"; then
		echo "bench: warning: a neonfs daemon did not exit 0 on SIGTERM" >&2
	fi
done
DAEMON_PIDS=()

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

spread() { printf '%s\n' "$@" | sort -g | sed -n '1p;$p' | paste -sd' '; }

# The ratios printed: neonfs against the best native and each native,
# the loopback against native (both on fdatasync), neonfs against the
# loopback, and the A/B.
PAIRS=("neonfs native-best" "neonfs native")
[ "$NATIVE_ODS" = 1 ] && PAIRS+=("neonfs native-ods")
[ "$LOOPBACK" = 1 ] && PAIRS+=("loopback native" "neonfs loopback")
[ "$AB" = 1 ] && PAIRS+=("neonfs-b native-best" "neonfs neonfs-b")
[ "$FLOOR" = 1 ] && PAIRS+=("loopback-tmpfs native-tmpfs" "loopback-tmpfs native"
	"neonfs-tmpfs loopback-tmpfs" "neonfs-tmpfs native" "neonfs neonfs-tmpfs")

echo
echo "pgbench scale $SCALE, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, $ROUNDS rounds (order rotating)"
echo "neonfs: wal_sync_method $NEONFS_WAL_SYNC, flags '${NEONFS_ARGS}'"
[ "$AB" = 1 ] && echo "neonfs-b: wal_sync_method $NEONFS_B_WAL_SYNC, flags '${NEONFS_B_ARGS}'${NEONFS_B_BIN:+, binary $NEONFS_B_BIN}"
[ -n "$PG_EXTRA" ] && echo "every Postgres: $PG_EXTRA"
line="first load (pgbench -i -s $SCALE on a fresh file system, one run each), seconds:"
for fs in "${FSES[@]}"; do line+=" $fs ${INIT[$fs]};"; done
echo "$line"
if [ "$INIT_ROUNDS" -gt 0 ]; then
	line="pgbench -i -s $SCALE, median of $INIT_ROUNDS alternating rounds, seconds:"
	for fs in "${FSES[@]}"; do
		l=""
		for r in $(seq 1 "$INIT_ROUNDS"); do l+=" ${INITS[$fs,$r]}"; done
		# shellcheck disable=SC2086 # a space-separated list
		line+=" $fs $(median $l);"
	done
	echo "$line"
	for fs in "${FSES[@]}"; do
		[ "$fs" = native ] && continue
		l=""
		for r in $(seq 1 "$INIT_ROUNDS"); do l+=" $(ratio "${INITS[$fs,$r]}" "${INITS[native,$r]}")"; done
		# shellcheck disable=SC2086
		echo "init $fs/native (median of per-round ratios): $(median $l) (spread $(spread $l))"
	done
fi
header=$(printf '%-12s %6s' workload round)
for fs in "${FSES[@]}"; do header+=$(printf ' %10s' "$fs"); done
for p in "${PAIRS[@]}"; do header+=$(printf ' %16s' "${p/ //}"); done
echo "$header"
# RATIOS[workload,pair] and LISTS[workload,fs]: space-separated per-round values.
declare -A RATIOS LISTS
for w in "${WORKLOADS[@]}"; do
	for r in $(seq 1 "$ROUNDS"); do
		row=$(printf '%-12s %6s' "$w" "$r")
		for fs in "${FSES[@]}"; do
			LISTS[$w,$fs]+=" ${TPS[$w,$fs,$r]}"
			row+=$(printf ' %10.1f' "${TPS[$w,$fs,$r]}")
		done
		for p in "${PAIRS[@]}"; do
			read -r a b <<<"$p"
			x=$(ratio "${TPS[$w,$a,$r]}" "${TPS[$w,$b,$r]}")
			RATIOS[$w,$p]+=" $x"
			row+=$(printf ' %16s' "$x")
		done
		echo "$row"
	done
done
# shellcheck disable=SC2086 # the lists are space-separated on purpose
for w in "${WORKLOADS[@]}"; do
	row=$(printf '%-12s %6s' "$w" median)
	for fs in "${FSES[@]}"; do row+=$(printf ' %10.1f' "$(median ${LISTS[$w,$fs]})"); done
	for p in "${PAIRS[@]}"; do row+=$(printf ' %16.3f' "$(median ${RATIOS[$w,$p]})"); done
	echo "$row"
done
# shellcheck disable=SC2086
for w in "${WORKLOADS[@]}"; do
	for p in "${PAIRS[@]}"; do
		echo "per-round ratio spread (min max), $w ${p/ //}: $(spread ${RATIOS[$w,$p]})"
	done
done
# CPU per transaction. TPC-B keeps these 2 cores about 80% busy on native
# ext4, so what a daemon spends per transaction is mostly taken from
# Postgres: the machine's figures divided are about the TPS ratio the CPU
# allows.
echo "CPU per transaction, microseconds, median of $ROUNDS rounds: machine (daemon)"
# shellcheck disable=SC2086
for w in "${WORKLOADS[@]}"; do
	row=$(printf '%-12s' "$w")
	for fs in "${FSES[@]}"; do
		m="" d=""
		for r in $(seq 1 "$ROUNDS"); do
			m+=" ${MCPU[$w,$fs,$r]}"
			d+=" ${DCPU[$w,$fs,$r]}"
		done
		row+=" $fs $(median $m)"
		[ -n "${DPID[$fs]:-}" ] && row+=" ($(median $d))"
		row+=";"
	done
	echo "$row"
done
