#!/usr/bin/env bash
# What replication costs and how fast a dead writer is replaced: pgbench
# TPC-B on native ext4, on a 1-voter neonfs volume and on two 3-voter
# clusters, in one run, with the ratios; then failover time from kill -9
# of the writer to the first commit on the new one.
#
#   sudo bench/cluster.sh
#   sudo QUICK=1 bench/cluster.sh                # quick check: scale 2, 5 s runs, 1 round, 1 failover
#   sudo PARTS=failover FAILOVERS=9 bench/cluster.sh
#
# All nodes run on this one machine: the three nodes of a cluster share
# its disk and its cores (2 on CI), so a 3-voter figure carries three
# fsyncs per commit on one disk and three daemons on two cores, which
# separate machines would not. Raft runs over TCP on 127.0.0.1.
#
# 1. pgbench (PARTS has pgbench). Four servers, all left running, each
#    loaded once (`pgbench -i -s $SCALE`, CHECKPOINT):
#    - native: Postgres on a directory on the same ext4 as the work dir
#      (initdb with data checksums, as an endpoint's);
#    - neonfs-1v: a plain `neonfs init` volume, `neonfs serve`, an endpoint
#      on main;
#    - neonfs-3v-fwd: a 3-voter cluster (init on n1, join n2 and n3, one
#      object directory), the endpoint created on a node that is not the
#      Raft leader: the writer forwards its commits to the leader;
#    - neonfs-3v-lead: the same with --lead-writes on every node's serve:
#      the writer's node takes the leadership when it takes the lease (the
#      endpoint is created on a follower here too, so the move happens).
#    Every endpoint: --auth trust --suspend-after 0, shared_buffers and
#    max_wal_size as the native server's. Every client connects over TCP
#    to 127.0.0.1 (native too), so the endpoint's proxy is the only extra
#    hop. For each of $ROUNDS rounds, TPC-B (`-c $CLIENTS -j $JOBS -T
#    $DURATION`) on each server, the order rotating, after sync and every
#    neonfs daemon settled (no flush or merge). Medians of the TPS and of
#    the per-round ratios against native; the Raft leader and the lease
#    holder after every 3-voter run (forwarding needs them apart,
#    --lead-writes together).
# 2. Failover (PARTS has failover). A fresh 3-voter cluster (--lead-writes
#    with FAILOVER_LEAD_WRITES=1) with an endpoint for main on every node;
#    bench/cluster (a pgx client) inserts one row per transaction through
#    whichever endpoint answers. Each of $FAILOVERS rounds: once commits
#    flow, the writer's daemon and its Postgres (the whole process tree)
#    are stopped and killed with SIGKILL; the time from just before that to
#    the client's first commit on a connection dialed after it is the
#    figure. Then what the dead daemon left is unmounted (umount -l; the
#    FUSE connection aborted if a process hangs in D state), and the node
#    restarts and rejoins before the next round. Each round says whether
#    the killed writer was also the Raft leader (then an election comes
#    first). At the end the client checks every acknowledged row is there.
#
# Everything (Postgres servers, the daemons, the client, the mounts, the
# temp dir under /var/tmp) is cleaned up on exit, Ctrl-C included.
#
# Environment: QUICK (0; 1 changes the defaults below to SCALE 2, DURATION
# 5, ROUNDS 1, FAILOVERS 1), PARTS ("pgbench failover"), SCALE (20),
# CLIENTS (4), JOBS (2), DURATION (30), ROUNDS (5), FAILOVERS (5),
# FAILOVER_LEAD_WRITES (0), KEEP_LOGS (a directory to copy the daemons',
# Postgres's and the client's logs to), NEONFS_BIN (build from the repo),
# PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	SCALE=${SCALE:-2} DURATION=${DURATION:-5} ROUNDS=${ROUNDS:-1} FAILOVERS=${FAILOVERS:-1}
fi
PARTS=${PARTS:-"pgbench failover"}
SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-5}
FAILOVERS=${FAILOVERS:-5}
FAILOVER_LEAD_WRITES=${FAILOVER_LEAD_WRITES:-0}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
# The failover goal printed beside the median, and what it compares with.
GOAL_MS=5000

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts file systems, kills daemons and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb pg_ctl pgbench psql
command -v jq >/dev/null || { echo "bench: jq not found (apt-get install jq)" >&2; exit 1; }
for v in SCALE CLIENTS JOBS DURATION ROUNDS FAILOVERS; do
	[ "${!v}" -ge 1 ] 2>/dev/null || { echo "bench: $v=${!v}: want a positive count" >&2; exit 1; }
done
for p in $PARTS; do
	case $p in pgbench | failover) ;; *) echo "bench: PARTS: $p: want pgbench and/or failover" >&2; exit 1 ;; esac
done
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

bench_workdir cluster

# Nodes are named PREFIX+INDEX (s1; f1..f3, l1..l3, x1..x3); a cluster
# node's ID is n+INDEX. Per node: its data dir, run dir, serve's extra
# arguments and pid.
declare -A DATA RUN SARGS SERVE_PID
NODES=()
NATIVE_PGDATA=""
CLIENT_PID=""
FUSECTL_MOUNTED=0
USED_PORTS=""
KILLED_PIDS="" # processes of killed nodes, to make sure of at exit

# tree_of PID...: the PIDs and all their descendants. (Postgres puts
# itself and each child in a process group of its own, so a group kill of
# serve's would miss them.)
tree_of() {
	ps -e -o pid=,ppid= | awk -v roots="$*" '
		BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) t[r[i]] = 1 }
		{ p[$1] = $2 }
		END {
			do { ch = 0; for (x in p) if (!(x in t) && (p[x] in t)) { t[x] = 1; ch = 1 } } while (ch)
			for (x in t) print x
		}' | sort -n | tr '\n' ' '
}

# alive PIDS...: those still there (zombies included: Postgres's lock
# check and a restart would see them).
alive() {
	local p out=""
	for p in "$@"; do [ -e "/proc/$p" ] && out+="$p "; done
	echo "$out"
}

# fuse_minors DIR: the FUSE connection numbers of the mounts under DIR.
fuse_minors() { awk -v d="$1/" 'index($5, d) == 1 && $0 ~ / - fuse/ { split($3, a, ":"); print a[2] }' /proc/self/mountinfo; }

abort_fuse() {
	local m
	for m in "$@"; do
		if [ -e "/sys/fs/fuse/connections/$m/abort" ]; then
			echo 1 >"/sys/fs/fuse/connections/$m/abort" || echo "bench: could not abort FUSE connection $m" >&2
		fi
	done
}

cleanup() {
	local rc=$? n pids=() p left
	set +e
	[ -n "$CLIENT_PID" ] && disown "$CLIENT_PID" 2>/dev/null && kill -KILL "$CLIENT_PID" 2>/dev/null
	[ -n "$NATIVE_PGDATA" ] && stop_postgres "$NATIVE_PGDATA"
	# The daemons running a Postgres (the writers) first, while their
	# clusters still have a quorum to release the lease through; then the
	# rest. Each phase all at once: a daemon stops its Postgres and unmounts.
	local trees="" phase t
	for phase in writers rest; do
		pids=()
		for n in "${NODES[@]}"; do
			p=${SERVE_PID[$n]:-}
			[ -n "$p" ] && kill -0 "$p" 2>/dev/null || continue
			t=$(tree_of "$p")
			[ "$phase" = writers ] && [ "$t" = "$p " ] && continue
			trees+="$t "
			kill -TERM "$p" 2>/dev/null
			pids+=("$p")
		done
		for p in "${pids[@]}"; do
			for _ in $(seq 1 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
			kill -0 "$p" 2>/dev/null && echo "bench: neonfs serve $p did not exit a minute after SIGTERM: killing it" >&2 && kill -KILL "$p"
			wait "$p" 2>/dev/null || [ "$rc" -ne 0 ] || echo "bench: warning: neonfs serve $p did not exit 0 on SIGTERM" >&2
		done
	done
	# What is left of them (and of killed nodes) goes, hanging FUSE
	# requests aborted first.
	# shellcheck disable=SC2086 # space-separated pid lists
	left=$(alive $trees $KILLED_PIDS)
	if [ -n "$left" ]; then
		# shellcheck disable=SC2086
		kill -KILL $left 2>/dev/null
		# shellcheck disable=SC2046
		abort_fuse $(fuse_minors "$WORK")
	fi
	[ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/
	unmount_and_remove "$WORK"
	[ "$FUSECTL_MOUNTED" = 1 ] && umount /sys/fs/fuse/connections
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# new_port VAR: a free port, never one handed out before in this run.
new_port() {
	local _port
	while :; do
		_port=$(free_port)
		[[ " $USED_PORTS " == *" $_port "* ]] || break
	done
	USED_PORTS+=" $_port"
	printf -v "$1" '%s' "$_port"
}

die_with_log() {
	echo "bench: $1; the last lines of $2:" >&2
	tail -n 30 "$2" >&2
	exit 1
}

# start_node NODE: serve in a session of its own (so it outlives a Ctrl-C
# of this script until cleanup stops it); returns once its daemon answers
# (a joining node answers after it caught up).
start_node() {
	local n=$1 i
	# shellcheck disable=SC2086 # SARGS: flags, one word each
	setsid "$BIN" serve --data "${DATA[$n]}" --run-dir "${RUN[$n]}" ${SARGS[$n]} >>"$LOGS/$n.log" 2>&1 &
	SERVE_PID[$n]=$!
	for ((i = 0; ; i++)); do
		"$BIN" endpoint list --data "${DATA[$n]}" >/dev/null 2>&1 && return 0
		kill -0 "${SERVE_PID[$n]}" 2>/dev/null || die_with_log "neonfs serve of $n exited" "$LOGS/$n.log"
		[ "$i" -lt 1200 ] || die_with_log "neonfs serve of $n not answering after 120s" "$LOGS/$n.log"
		sleep 0.1
	done
}

# node_of PREFIX ID: the node name of cluster PREFIX's node ID.
node_of() { echo "$1${2#n}"; }

# cstatus NODE: `cluster status --json` as NODE sees it (fails if it does
# not answer).
cstatus() { "$BIN" cluster status --json --data "${DATA[$1]}" 2>/dev/null; }
leader_of() { jq -r '.leader // ""' <<<"$1"; }
writer_of() { jq -r '[.leases[]? | select(.branch == "main") | .node][0] // ""' <<<"$1"; }

# live_node PREFIX: a node of the cluster whose daemon runs.
live_node() {
	local k n
	for k in 1 2 3; do
		n=$1$k
		[ -n "${SERVE_PID[$n]:-}" ] && kill -0 "${SERVE_PID[$n]}" 2>/dev/null && { echo "$n"; return; }
	done
	return 1
}

# wait_healthy PREFIX: until a live node sees 3 members, none in error,
# and a leader. (A restarted node answers once it caught up; under the
# ledger's writes a follower's lag is rarely 0.)
wait_healthy() {
	local i st n
	for ((i = 0; i < 1200; i++)); do
		n=$(live_node "$1")
		if st=$(cstatus "$n") && jq -e '(.leader // "") != "" and (.members | length) == 3
			and all(.members[]; (.error // "") == "")' <<<"$st" >/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	echo "bench: cluster $1 not healthy after 120s; as $n sees it:" >&2
	cstatus "$n" >&2 || true
	exit 1
}

# make_cluster PREFIX [SERVE ARGS]: a 3-voter cluster, running and
# healthy: init n1, serve it, join n2 and n3 through it, serve them.
make_cluster() {
	local prefix=$1 args=${2:-} k n raft1="" raft
	for k in 1 2 3; do
		n=$prefix$k
		NODES+=("$n")
		DATA[$n]=$WORK/$n/data RUN[$n]=$WORK/$n/run SARGS[$n]=$args
		mkdir -p -m 0755 "$WORK/$n"
		new_port raft
		if [ "$k" = 1 ]; then
			raft1=127.0.0.1:$raft
			"$BIN" init --data "${DATA[$n]}" --objects "$WORK/$prefix-objects" --node-id n1 --raft-addr "$raft1" >>"$LOGS/$n.log" 2>&1 ||
				die_with_log "neonfs init of $n failed" "$LOGS/$n.log"
		else
			"$BIN" join --data "${DATA[$n]}" --node-id "n$k" --raft-addr "127.0.0.1:$raft" --peer "$raft1" >>"$LOGS/$n.log" 2>&1 ||
				die_with_log "neonfs join of $n failed" "$LOGS/$n.log"
		fi
		echo "bench[$prefix]: starting node n$k (raft 127.0.0.1:$raft${args:+, $args})" >&2
		start_node "$n"
	done
	wait_healthy "$prefix"
}

# endpoint_on NODE PORT: an endpoint for main on NODE's daemon. Postgres
# gets the native server's shared_buffers and max_wal_size.
endpoint_on() {
	"$BIN" endpoint create main --data "${DATA[$1]}" --port "$2" --auth trust --suspend-after 0 \
		--pg-conf shared_buffers=128MB --pg-conf max_wal_size=1GB >/dev/null
}

pg() { "$PGBIN/$1" -h 127.0.0.1 -p "$2" -U postgres "${@:3}"; }

# took_ms LINE: a slog line's took= in ms.
took_ms() {
	grep -o 'took=[^ ]*' <<<"$1" | cut -d= -f2 | awk '
		/ms$/ { sub(/ms$/, ""); print; next }
		/µs$/ { sub(/µs$/, ""); print $0 / 1000; next }
		/s$/ { sub(/s$/, ""); print $0 * 1000; next }' || true
}

# ms_since NS LINE: ms from NS (date +%s%N) to the time= of a slog LINE.
ms_since() {
	local t
	t=$(grep -o '^time=[^ ]*' <<<"$2" | cut -d= -f2 || true)
	[ -n "$t" ] || { echo "?"; return; }
	awk -v a="$1" -v b="$(date -d "$t" +%s%N)" 'BEGIN { printf "%.0f", (b - a) / 1e6 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
spread() { printf '%s\n' "$@" | sort -g | sed -n '1p;$p' | paste -sd' '; }

neonfs_binary "$WORK"
DISK=$(df --output=source "$WORK" | tail -n 1)
CORES=$(nproc)
START=$SECONDS

# ---- 1. pgbench -------------------------------------------------------------

declare -A PORT TPS ROLES
SETTLE_DIRS=()
FSES=(native neonfs-1v neonfs-3v-fwd neonfs-3v-lead)

# load LABEL: pgbench -i and a checkpoint through PORT[LABEL] (on an
# endpoint the first connection runs initdb).
load() {
	local t0=$SECONDS
	echo "bench[$1]: pgbench -i -s $SCALE on port ${PORT[$1]}" >&2
	pg pgbench "${PORT[$1]}" -i -s "$SCALE" -q postgres >"$LOGS/$1-init.log" 2>&1 ||
		die_with_log "pgbench -i on $1 failed" "$LOGS/$1-init.log"
	pg psql "${PORT[$1]}" -X -q -c CHECKPOINT postgres >/dev/null
	echo "bench[$1]: init took $((SECONDS - t0))s" >&2
}

# settle: dirty pages written back, and no neonfs daemon flushing or
# merging (all at once: each takes a couple of seconds to agree).
settle() {
	local d pids=() p
	sync
	for d in "${SETTLE_DIRS[@]}"; do
		(neonfs_settle "$BIN" "$d" 2>&1 | grep -v 'settled after' >&2 || true) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || true; done
}

# roles LABEL: "writer nX, leader nY" of a 3-voter variant.
roles() {
	local prefix=l st n
	[ "$1" = neonfs-3v-fwd ] && prefix=f
	n=$(live_node "$prefix")
	st=$(cstatus "$n") || { echo "status unavailable"; return; }
	echo "writer $(writer_of "$st"), leader $(leader_of "$st")"
}

# run_on LABEL: the TPS of one timed TPC-B run.
run_on() {
	local out
	settle
	echo "bench[$1]: pgbench for ${DURATION}s" >&2
	if ! out=$(pg pgbench "${PORT[$1]}" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" postgres 2>&1); then
		echo "bench[$1]: pgbench failed:" >&2
		echo "$out" >&2
		exit 1
	fi
	if grep -q 'number of failed transactions: [1-9]' <<<"$out"; then
		echo "bench[$1]: warning: $(grep 'number of failed transactions' <<<"$out")" >&2
	fi
	awk '/^tps = /{print $3; exit}' <<<"$out"
}

pgbench_part() {
	local p st leader writer k n r i order line fs
	# native
	mkdir -m 0755 "$WORK/native"
	NATIVE_PGDATA=$WORK/native/pgdata
	install -d -m 0700 -o postgres -g postgres "$NATIVE_PGDATA"
	echo "bench[native]: initdb in $NATIVE_PGDATA" >&2
	as_postgres "$PGBIN/initdb" -D "$NATIVE_PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --data-checksums >/dev/null
	new_port p
	PORT[native]=$p
	as_postgres "$PGBIN/pg_ctl" start -D "$NATIVE_PGDATA" -l "$LOGS/native-postgres.log" -w -t 600 \
		-o "-c port=$p -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SOCK -c shared_buffers=128MB -c max_wal_size=1GB" >/dev/null
	load native

	# 1 voter
	n=s1
	NODES+=("$n")
	DATA[$n]=$WORK/$n/data RUN[$n]=$WORK/$n/run SARGS[$n]=""
	mkdir -m 0755 "$WORK/$n"
	"$BIN" init --data "${DATA[$n]}" >>"$LOGS/$n.log" 2>&1 || die_with_log "neonfs init of $n failed" "$LOGS/$n.log"
	start_node "$n"
	new_port p
	PORT[neonfs-1v]=$p
	endpoint_on "$n" "$p"
	load neonfs-1v
	SETTLE_DIRS+=("${DATA[$n]}")

	# 3 voters: forwarding (f), --lead-writes (l). The endpoint goes on the
	# first node that is not the leader.
	for k in f l; do
		local label=neonfs-3v-fwd args=""
		[ "$k" = l ] && label=neonfs-3v-lead args=--lead-writes
		make_cluster "$k" "$args"
		st=$(cstatus "${k}1")
		leader=$(leader_of "$st")
		for i in 1 2 3; do [ "n$i" != "$leader" ] && break; done
		new_port p
		PORT[$label]=$p
		echo "bench[$label]: leader $leader; endpoint on n$i (port $p)" >&2
		endpoint_on "$k$i" "$p"
		load "$label"
		echo "bench[$label]: after the load: $(roles "$label")" >&2
		for i in 1 2 3; do SETTLE_DIRS+=("${DATA[$k$i]}"); done
	done

	local n_fs=${#FSES[@]}
	for r in $(seq 1 "$ROUNDS"); do
		order=()
		for i in $(seq 0 $((n_fs - 1))); do order+=("${FSES[$(((i + r - 1) % n_fs))]}"); done
		line="bench: round $r/$ROUNDS:"
		for fs in "${order[@]}"; do
			TPS[$fs,$r]=$(run_on "$fs")
			case $fs in neonfs-3v-*) ROLES[$fs,$r]=$(roles "$fs") ;; esac
		done
		for fs in "${FSES[@]}"; do line+=" $fs ${TPS[$fs,$r]};"; done
		echo "$line" >&2
	done
}

print_pgbench() {
	local r fs row x w=16
	local vs=(neonfs-1v neonfs-3v-fwd neonfs-3v-lead)
	declare -A RAT LIST
	echo
	echo "pgbench TPC-B, scale $SCALE, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, $ROUNDS rounds (order rotating), over TCP to 127.0.0.1"
	echo "every server and every node shares one disk ($DISK) and $CORES cores: a 3-voter commit is three fsyncs on that disk and three daemons on those cores"
	row=$(printf '%-7s' round)
	for fs in "${FSES[@]}"; do row+=$(printf " %${w}s" "$fs"); done
	for fs in "${vs[@]}"; do row+=$(printf " %${w}s" "${fs#neonfs-}/native"); done
	echo "$row"
	for r in $(seq 1 "$ROUNDS"); do
		row=$(printf '%-7s' "$r")
		for fs in "${FSES[@]}"; do
			LIST[$fs]+=" ${TPS[$fs,$r]}"
			row+=$(printf " %${w}.1f" "${TPS[$fs,$r]}")
		done
		for fs in "${vs[@]}"; do
			x=$(ratio "${TPS[$fs,$r]}" "${TPS[native,$r]}")
			RAT[$fs]+=" $x"
			row+=$(printf " %${w}s" "$x")
		done
		echo "$row"
	done
	# shellcheck disable=SC2086 # space-separated lists
	{
		row=$(printf '%-7s' median)
		for fs in "${FSES[@]}"; do row+=$(printf " %${w}.1f" "$(median ${LIST[$fs]})"); done
		for fs in "${vs[@]}"; do row+=$(printf " %${w}.3f" "$(median ${RAT[$fs]})"); done
		echo "$row"
		for fs in "${vs[@]}"; do echo "per-round ratio spread (min max), ${fs#neonfs-}/native: $(spread ${RAT[$fs]})"; done
		echo "3 voters against 1 (medians of TPS): fwd $(ratio "$(median ${LIST[neonfs-3v-fwd]})" "$(median ${LIST[neonfs-1v]})")," \
			"lead $(ratio "$(median ${LIST[neonfs-3v-lead]})" "$(median ${LIST[neonfs-1v]})")"
	}
	for fs in neonfs-3v-fwd neonfs-3v-lead; do
		row="roles after each run, ${fs#neonfs-}:"
		for r in $(seq 1 "$ROUNDS"); do row+=" round $r: ${ROLES[$fs,$r]};"; done
		echo "$row"
	done
	echo "  (fwd measures forwarding only where writer and leader differ; lead expects them equal)"
}

# ---- 2. failover ------------------------------------------------------------

declare -A EP_PORT
FO_MS=() # per round, ms
FO_ELECTION=() # per round: the killed writer was the leader too (1) or not (0)
FO_LINES=()

# client_status: COMMITS LAST_PORT LAST_COMMIT_NS ERRORS of the ledger client.
client_status() { cat "$WORK/ledger.status" 2>/dev/null || echo "0 - 0 0"; }

# wait_flowing PORT: until the client committed through PORT within the
# last 300 ms.
wait_flowing() {
	local i c lp ln e
	for ((i = 0; i < 600; i++)); do
		read -r c lp ln e < <(client_status)
		[ "$lp" = "$1" ] && [ $(($(date +%s%N) - ln)) -lt 300000000 ] && return 0
		kill -0 "$CLIENT_PID" 2>/dev/null || die_with_log "the ledger client exited" "$LOGS/ledger.log"
		sleep 0.1
	done
	die_with_log "no commits through port $1 for 60s (client: $(client_status))" "$LOGS/ledger.log"
}

failover_part() {
	local k n p ports="" st writer leader wnode i r pids minors kill_ns line commit_ns ms newid nlog took woke left aborted
	if ! mountpoint -q /sys/fs/fuse/connections; then
		mount -t fusectl none /sys/fs/fuse/connections && FUSECTL_MOUNTED=1
	fi
	echo "bench: building bench/cluster (the ledger client)" >&2
	go build -o "$WORK/ledger" ./bench/cluster
	make_cluster x "$([ "$FAILOVER_LEAD_WRITES" = 1 ] && echo --lead-writes)"
	for k in 1 2 3; do
		new_port p
		EP_PORT[x$k]=$p
		ports+=${ports:+,}$p
		endpoint_on "x$k" "$p"
	done
	# n1's endpoint first: it takes the lease and runs initdb.
	echo "bench[failover]: first wake of main on n1 (initdb)" >&2
	pg psql "${EP_PORT[x1]}" -X -q -c 'SELECT 1' postgres >/dev/null
	: >"$WORK/ledger.out"
	"$WORK/ledger" -ports "$ports" -status "$WORK/ledger.status" >"$WORK/ledger.out" 2>>"$LOGS/ledger.log" &
	CLIENT_PID=$!

	for r in $(seq 1 "$FAILOVERS"); do
		wait_healthy x
		sleep 2 # a few lease renewals on the new configuration
		n=$(live_node x)
		st=$(cstatus "$n")
		writer=$(writer_of "$st") leader=$(leader_of "$st")
		[ -n "$writer" ] || { echo "bench[failover]: no writer of main as $n sees it: $st" >&2; exit 1; }
		wnode=$(node_of x "$writer")
		wait_flowing "${EP_PORT[$wnode]}"
		echo "bench[failover]: round $r: killing $writer (writer; leader $leader), client at $(client_status | cut -d' ' -f1) commits" >&2

		pids=$(tree_of "${SERVE_PID[$wnode]}")
		minors=$(fuse_minors "${RUN[$wnode]}" | tr '\n' ' ')
		# disown: bash reaps it without a "Killed" notice.
		disown "${SERVE_PID[$wnode]}"
		kill_ns=$(date +%s%N)
		# shellcheck disable=SC2086 # space-separated pid list
		{ kill -STOP $pids; kill -KILL $pids; } 2>/dev/null || true
		kill -USR1 "$CLIENT_PID"
		KILLED_PIDS+=" $pids"

		line=""
		for ((i = 0; i < 1200; i++)); do
			line=$(grep '^failover ' "$WORK/ledger.out" | sed -n "${r}p" || true)
			[ -n "$line" ] && break
			kill -0 "$CLIENT_PID" 2>/dev/null || die_with_log "the ledger client exited" "$LOGS/ledger.log"
			sleep 0.1
		done
		if [ -z "$line" ]; then
			echo "bench[failover]: round $r: no commit 120s after killing $writer; the other nodes' logs:" >&2
			for k in 1 2 3; do [ "x$k" = "$wnode" ] || { echo "== n$k" >&2; tail -n 20 "$LOGS/x$k.log" >&2; }; done
			exit 1
		fi
		read -r _ commit_ns p _ <<<"$line"
		ms=$(awk -v a="$kill_ns" -v b="$commit_ns" 'BEGIN { printf "%.0f", (b - a) / 1e6 }')
		FO_MS+=("$ms")

		# The new writer, from its log: when it took the lease and when its
		# Postgres was ready (the wake: mount and crash recovery).
		newid="?"
		for k in 1 2 3; do [ "${EP_PORT[x$k]}" = "$p" ] && newid=n$k; done
		nlog=$LOGS/$(node_of x "$newid").log
		took=$(grep -F 'msg="took writer lease"' "$nlog" | tail -n 1 || true)
		woke=$(grep -F 'msg="endpoint woke"' "$nlog" | tail -n 1 || true)
		FO_ELECTION+=("$([ "$writer" = "$leader" ] && echo 1 || echo 0)")
		FO_LINES+=("round $r: ${ms} ms; killed $writer (the writer, $([ "$writer" = "$leader" ] && echo "also the Raft leader: an election first" || echo "not the leader: $leader")); new writer $newid took the lease at +$(ms_since "$kill_ns" "$took") ms, its Postgres ready at +$(ms_since "$kill_ns" "$woke") ms (wake $(took_ms "$woke") ms); the client failed $(awk '{print $4}' <<<"$line") attempts meanwhile")
		echo "bench[failover]: ${FO_LINES[-1]}" >&2

		# What the dead daemon left: its mounts (lazily), then, if a
		# process hangs in D state on them, its FUSE connections.
		SERVE_PID[$wnode]=""
		for p in $(mounts_under "${RUN[$wnode]}"); do umount -l "$p" || fusermount3 -uz "$p"; done
		aborted=0
		for ((i = 0; i < 300; i++)); do
			# shellcheck disable=SC2086
			left=$(alive $pids)
			[ -z "$left" ] && break
			if [ "$i" -ge 20 ] && [ "$aborted" = 0 ] && [ -n "$minors" ]; then
				for p in $left; do
					if [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = D ]; then
						echo "bench[failover]: process $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)) hangs in D state: aborting FUSE connection(s) $minors" >&2
						# shellcheck disable=SC2086
						abort_fuse $minors
						aborted=1
						break
					fi
				done
			fi
			sleep 0.1
		done
		[ -z "$left" ] || echo "bench[failover]: warning: processes of the killed $writer still there after 30s: $left" >&2

		echo "bench[failover]: restarting $writer" >&2
		start_node "$wnode"
	done
	wait_healthy x
	kill -TERM "$CLIENT_PID"
	if ! wait "$CLIENT_PID"; then
		echo "bench[failover]: the ledger client failed its check:" >&2
		tail -n 5 "$LOGS/ledger.log" >&2
	fi
	CLIENT_PID=""
	LEDGER=$(grep '^ledger ' "$WORK/ledger.out" || echo "ledger: no check (the client failed)")
}

print_failover() {
	local l
	echo
	echo "failover: kill -9 of the writer's daemon and its Postgres -> the client's first commit on the new writer"
	echo "3 voters (lease TTL default)$([ "$FAILOVER_LEAD_WRITES" = 1 ] && echo ", --lead-writes"), all on one disk ($DISK) and $CORES cores; an endpoint for main on every node"
	for l in "${FO_LINES[@]}"; do echo "  $l"; done
	echo "median of ${#FO_MS[@]}: $(median "${FO_MS[@]}") ms (goal: < ${GOAL_MS} ms; LiteFS fails over in about 11 s with a Consul lease)"
	local e i list
	for e in 1 0; do
		list=()
		for i in "${!FO_MS[@]}"; do [ "${FO_ELECTION[$i]}" = "$e" ] && list+=("${FO_MS[$i]}"); done
		[ ${#list[@]} -gt 0 ] || continue
		echo "  $([ "$e" = 1 ] && echo "the writer was also the leader" || echo "the writer was a follower"): median of ${#list[@]}: $(median "${list[@]}") ms"
	done
	echo "$LEDGER (every acknowledged row must be there: missing=0)"
}

if has_part pgbench; then pgbench_part; fi
if has_part failover; then failover_part; fi

if has_part pgbench; then print_pgbench; fi
if has_part failover; then print_failover; fi
echo "total run time $(((SECONDS - START) / 60))m$(((SECONDS - START) % 60))s"
