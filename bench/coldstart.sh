#!/usr/bin/env bash
# Cold start of a suspended endpoint: a client's connect to the first row
# of `SELECT 1` through the endpoint's listener (the daemon mounts the
# branch and starts Postgres meanwhile), beside the floor on native ext4,
# in the same run; and the daemon's RSS active vs suspended.
#
#   sudo bench/coldstart.sh
#   sudo SCALES=1 RUNS=3 VARIANTS=warm bench/coldstart.sh    # quick check
#
# For each pgbench scale, a native cluster (a directory on the same ext4 as
# the work dir) and a neonfs volume served by `neonfs serve`, with an
# endpoint on branch main (--suspend-after $SUSPEND_AFTER), both loaded with
# `pgbench -i -s SCALE` (server-side generation), both with data checksums
# and scram-sha-256 over TCP on 127.0.0.1: the client does the same work
# against both. Then, per variant (warm: page cache as it is; dropped:
# `sync; echo 3 > /proc/sys/vm/drop_caches` before every start), $RUNS
# rounds, the order of native and neonfs alternating:
#   - native, pg_ctl: `pg_ctl start -w` + connect + first row (the floor the
#     issue names; pg_ctl itself polls for readiness every 100 ms);
#   - native, direct: the client execs postgres itself as user postgres
#     (as the daemon does: no runuser/PAM, no pg_ctl, which cost 50-170 ms
#     here), polls postmaster.pid every 1 ms until it says ready, then
#     connect + first row: Postgres's own start, the floor for an endpoint
#     (connection attempts instead of the pid file would each fork a
#     backend that is turned away while it starts, slowing it on 2 cores);
#   - neonfs: with the endpoint suspended (and the daemon settled), connect
#     + first row through the listener, timed by the client; beside it the
#     daemon's own figure (last_cold_start_ns: mount + Postgres ready) and
#     the mount alone (the serve log's "mounted ... took").
# All times come from bench/coldstart (a small pgx client: connect to first
# row inside one process, simple protocol as psql; no shell or binary
# start-up in the figure); its own cost is measured against the warm
# endpoint and the running native server (and psql's, process included, for
# comparison). RSS is VmRSS of the serve process: after each wake's query
# (active) and right before each wake (suspended, after the settle).
# Medians and p90 (nearest rank). Everything (the daemon, Postgres, mounts
# under the run dir, the temp dir) is cleaned up on exit, Ctrl-C included.
#
# Environment: SCALES ("1 50"), RUNS (10), VARIANTS ("warm dropped"),
# SUSPEND_AFTER (2s), WARM_N (20: warm connects for the client's overhead),
# KEEP_LOGS (a directory to copy the serve and Postgres logs to), NEONFS_BIN
# (build from the repo), PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SCALES=${SCALES:-"1 50"}
RUNS=${RUNS:-10}
VARIANTS=${VARIANTS:-"warm dropped"}
SUSPEND_AFTER=${SUSPEND_AFTER:-2s}
WARM_N=${WARM_N:-20}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts file systems, drops caches and runs Postgres as postgres)" >&2; exit 1; }
need_pg initdb pg_ctl pgbench psql
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "bench: RUNS=$RUNS: want a positive count" >&2; exit 1; }
for v in $VARIANTS; do
	case $v in warm | dropped) ;; *) echo "bench: VARIANTS: $v: want warm and/or dropped" >&2; exit 1 ;; esac
done

bench_workdir coldstart

DAEMON_PID=""
NATIVE_PGDATA=""
PG_PIDS=() # the endpoint's postmasters seen, killed (their group) if left over

stop_daemon() {
	[ -n "$DAEMON_PID" ] || return 0
	stop_pid "$DAEMON_PID"
	wait "$DAEMON_PID" 2>/dev/null || echo "bench: warning: neonfs serve did not exit 0 on SIGTERM" >&2
	DAEMON_PID=""
}

cleanup() {
	local rc=$? p
	set +e
	[ -n "$NATIVE_PGDATA" ] && stop_postgres "$NATIVE_PGDATA"
	stop_daemon
	# A daemon that died hard leaves its Postgres (its own process group).
	for p in "${PG_PIDS[@]}"; do
		kill -0 "$p" 2>/dev/null && kill -KILL -- "-$p" 2>/dev/null
	done
	[ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

neonfs_binary "$WORK"
echo "bench: building bench/coldstart" >&2
go build -o "$WORK/coldstart" ./bench/coldstart
CLIENT=$WORK/coldstart

# quantile Q: the Q-quantile (nearest rank) of the numbers on stdin.
quantile() { sort -g | awk -v q="$1" '{ v[NR] = $1 } END { r = int(q * NR + 0.999999); if (r < 1) r = 1; print v[r] }'; }
med() { printf '%s\n' "$@" | quantile 0.5; }
p90() { printf '%s\n' "$@" | quantile 0.9; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# client [ARGS...]: bench/coldstart with COLDSTART_URL=$URL (the password
# travels in the environment only), from / so postgres can run pg_ctl.
client() { (cd / && COLDSTART_URL=$URL "$CLIENT" "$@"); }

# ep_json VOL: `endpoint list --json` on one line without blanks.
ep_json() { "$BIN" endpoint list --data "$1" --json | tr -d ' \n'; }
ep_field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -n 1 | cut -d: -f2 | tr -d '"'; }

# wait_state VOL STATE [SECONDS]
wait_state() {
	local i st
	for ((i = 0; i < ${3:-120} * 10; i++)); do
		st=$(ep_field "$(ep_json "$1")" state)
		[ "$st" = "$2" ] && return 0
		kill -0 "$DAEMON_PID" 2>/dev/null || { echo "bench: neonfs serve exited" >&2; exit 1; }
		sleep 0.1
	done
	echo "bench: endpoint still $st after ${3:-120}s, want $2" >&2
	exit 1
}

# last_mount_took LOG: the "took" of the serve log's last "mounted" line, in ms.
last_mount_took() {
	grep -F 'msg=mounted ' "$1" | tail -n 1 | grep -o 'took=[^ ]*' | cut -d= -f2 | awk '
		/ms$/ { sub(/ms$/, ""); print; next }
		/µs$/ { sub(/µs$/, ""); print $0 / 1000; next }
		/s$/ { sub(/s$/, ""); print $0 * 1000; next }'
}

NATIVE_PW=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')

# Results, keyed by scale,variant (lists of ms) or scale.
declare -A N_CTL N_DIRECT N_DIRECT_CONN N_CTL_CMD NEON DAEMON MOUNT PGREADY AFTER RSS_ACT RSS_SUS
declare -A W_NEON W_NATIVE W_PSQL RSS_FINAL DBSIZE

# native_start_opts PORT: postgres -o options for the native server.
native_opts() { echo "-c port=$1 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SOCK"; }

bench_scale() {
	local scale=$1 dir=$WORK/s$1 pgdata nport vol run eport log out pw v r t cold before after m
	mkdir -m 0755 "$dir"

	# Native: initdb (checksums, scram, like the endpoint's), load, stop.
	pgdata=$dir/native/pgdata
	mkdir -p -m 0755 "$dir/native"
	install -d -m 0700 -o postgres -g postgres "$pgdata"
	NATIVE_PGDATA=$pgdata
	install -m 0600 -o postgres -g postgres /dev/null "$dir/pw"
	echo "$NATIVE_PW" >"$dir/pw"
	echo "bench[s$scale]: native initdb, pgbench -i -s $scale" >&2
	as_postgres "$PGBIN/initdb" -D "$pgdata" -U postgres --auth=scram-sha-256 --pwfile="$dir/pw" \
		--encoding=UTF8 --locale=C --data-checksums >/dev/null
	rm -f "$dir/pw"
	nport=$(free_port)
	as_postgres "$PGBIN/pg_ctl" start -D "$pgdata" -l "$LOGS/native-s$scale.log" -w -t 300 -o "$(native_opts "$nport")" >/dev/null
	t=$SECONDS
	PGPASSWORD=$NATIVE_PW "$PGBIN/pgbench" -i -s "$scale" -I dtGvp -h 127.0.0.1 -p "$nport" -U postgres postgres >/dev/null 2>&1
	echo "bench[s$scale]: native load took $((SECONDS - t))s" >&2
	as_postgres "$PGBIN/pg_ctl" stop -D "$pgdata" -m fast -w -t 300 >/dev/null

	# neonfs: a volume, serve, an endpoint on main, load through it.
	vol=$dir/volume
	run=$dir/run
	log=$LOGS/serve-s$scale.log
	"$BIN" init --data "$vol" >/dev/null
	"$BIN" serve --data "$vol" --run-dir "$run" >"$log" 2>&1 &
	DAEMON_PID=$!
	for ((t = 0; ; t++)); do
		"$BIN" endpoint list --data "$vol" --json >/dev/null 2>&1 && break
		kill -0 "$DAEMON_PID" 2>/dev/null || { echo "bench: neonfs serve exited:" >&2; cat "$log" >&2; exit 1; }
		[ "$t" -lt 600 ] || { echo "bench: neonfs serve not answering after 60s" >&2; cat "$log" >&2; exit 1; }
		sleep 0.1
	done
	eport=$(free_port)
	URL=$("$BIN" endpoint create main --data "$vol" --port "$eport" --suspend-after "$SUSPEND_AFTER")
	# postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres (base64url: no escapes)
	pw=${URL#postgres://postgres:}
	pw=${pw%@*}
	echo "bench[s$scale]: neonfs endpoint on $eport: initdb on the first connection, pgbench -i -s $scale" >&2
	t=$SECONDS
	PGPASSWORD=$pw "$PGBIN/pgbench" -i -s "$scale" -I dtGvp -h 127.0.0.1 -p "$eport" -U postgres postgres >/dev/null 2>&1
	DBSIZE[$scale]=$(PGPASSWORD=$pw "$PGBIN/psql" -X -A -t -h 127.0.0.1 -p "$eport" -U postgres -d postgres \
		-c "SELECT pg_size_pretty(pg_database_size('postgres'))")
	echo "bench[s$scale]: neonfs first wake + load took $((SECONDS - t))s, database ${DBSIZE[$scale]}" >&2
	PG_PIDS+=("$(ep_field "$(ep_json "$vol")" pid)")
	wait_state "$vol" suspended
	neonfs_settle "$BIN" "$vol"

	for v in $VARIANTS; do
		echo "bench[s$scale]: $v page cache: $RUNS rounds" >&2
		for r in $(seq 1 "$RUNS"); do
			# Odd rounds native first, even rounds neonfs first.
			for side in $( ((r % 2)) && echo "native neonfs" || echo "neonfs native"); do
				if [ "$side" = native ]; then
					URL="host=127.0.0.1 port=$nport user=postgres dbname=postgres password=$NATIVE_PW"
					[ "$v" = dropped ] && drop_caches
					out=$(client -- runuser -u postgres -- "$PGBIN/pg_ctl" start -s -D "$pgdata" -l "$LOGS/native-s$scale.log" \
						-w -t 300 -o "$(native_opts "$nport")")
					N_CTL[$scale,$v]+=" $(cut -d' ' -f1 <<<"$out")"
					N_CTL_CMD[$scale,$v]+=" $(cut -d' ' -f2 <<<"$out")"
					as_postgres "$PGBIN/pg_ctl" stop -D "$pgdata" -m fast -w -t 300 >/dev/null
					[ "$v" = dropped ] && drop_caches
					# shellcheck disable=SC2046 # native_opts: options, one word each
					out=$(client -retry 120s -poll 1ms -pidfile "$pgdata/postmaster.pid" -bg -as postgres \
						-log "$LOGS/native-direct-s$scale.log" -- "$PGBIN/postgres" -D "$pgdata" $(native_opts "$nport"))
					N_DIRECT[$scale,$v]+=" $(cut -d' ' -f1 <<<"$out")"
					N_DIRECT_CONN[$scale,$v]+=" $(cut -d' ' -f3 <<<"$out")"
					as_postgres "$PGBIN/pg_ctl" stop -D "$pgdata" -m fast -w -t 300 >/dev/null
				else
					URL="postgres://postgres:$pw@127.0.0.1:$eport/postgres"
					wait_state "$vol" suspended
					neonfs_settle "$BIN" "$vol" 2>/dev/null
					before=$(ep_field "$(ep_json "$vol")" cold_starts)
					RSS_SUS[$scale]+=" $(rss_mib "$DAEMON_PID")"
					[ "$v" = dropped ] && drop_caches
					out=$(client)
					RSS_ACT[$scale]+=" $(rss_mib "$DAEMON_PID")"
					cold=$(ep_json "$vol")
					after=$(ep_field "$cold" cold_starts)
					[ "$after" = $((before + 1)) ] || { echo "bench: round $r was no cold start (cold_starts $before -> $after)" >&2; exit 1; }
					PG_PIDS+=("$(ep_field "$cold" pid)")
					NEON[$scale,$v]+=" $(cut -d' ' -f1 <<<"$out")"
					DAEMON[$scale,$v]+=" $(awk -v n="$(ep_field "$cold" last_cold_start_ns)" 'BEGIN { printf "%.1f", n / 1e6 }')"
					m=$(last_mount_took "$log")
					MOUNT[$scale,$v]+=" ${m:-0}"
					PGREADY[$scale,$v]+=" $(awk -v d="$(echo "${DAEMON[$scale,$v]}" | awk '{print $NF}')" -v m="${m:-0}" 'BEGIN { printf "%.1f", d - m }')"
					AFTER[$scale,$v]+=" $(awk -v c="$(cut -d' ' -f1 <<<"$out")" -v d="$(echo "${DAEMON[$scale,$v]}" | awk '{print $NF}')" 'BEGIN { printf "%.1f", c - d }')"
				fi
			done
			echo "bench[s$scale/$v]: round $r: native pg_ctl $(echo "${N_CTL[$scale,$v]}" | awk '{print $NF}') ms," \
				"direct $(echo "${N_DIRECT[$scale,$v]}" | awk '{print $NF}') ms," \
				"neonfs $(echo "${NEON[$scale,$v]}" | awk '{print $NF}') ms (daemon $(echo "${DAEMON[$scale,$v]}" | awk '{print $NF}'), mount $(echo "${MOUNT[$scale,$v]}" | awk '{print $NF}'))" >&2
		done
	done

	# The client's own cost: connect to first row against servers running.
	echo "bench[s$scale]: client overhead, $WARM_N warm connects each" >&2
	URL="postgres://postgres:$pw@127.0.0.1:$eport/postgres"
	client >/dev/null # wakes it; the next $WARM_N find it active
	W_NEON[$scale]=$(client -n "$WARM_N" | cut -d' ' -f1 | quantile 0.5)
	local psql_ms=() t0
	for _ in $(seq 1 "$WARM_N"); do
		t0=$(date +%s%N)
		PGPASSWORD=$pw "$PGBIN/psql" -X -A -t -h 127.0.0.1 -p "$eport" -U postgres -d postgres -c 'SELECT 1' >/dev/null
		psql_ms+=("$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')")
	done
	W_PSQL[$scale]=$(med "${psql_ms[@]}")
	URL="host=127.0.0.1 port=$nport user=postgres dbname=postgres password=$NATIVE_PW"
	as_postgres "$PGBIN/pg_ctl" start -D "$pgdata" -l "$LOGS/native-s$scale.log" -w -t 300 -o "$(native_opts "$nport")" >/dev/null
	W_NATIVE[$scale]=$(client -n "$WARM_N" | cut -d' ' -f1 | quantile 0.5)
	as_postgres "$PGBIN/pg_ctl" stop -D "$pgdata" -m fast -w -t 300 >/dev/null

	# RSS once more after a longer rest: suspended, then 5 s.
	wait_state "$vol" suspended
	sleep 5
	RSS_FINAL[$scale]=$(rss_mib "$DAEMON_PID")

	stop_daemon
	PG_PIDS=()
	NATIVE_PGDATA=""
	rm -rf "$dir"
}

START=$SECONDS
for s in $SCALES; do
	bench_scale "$s"
done

echo
echo "cold start: connect -> first row of SELECT 1, ms, median / p90 of $RUNS (suspend-after $SUSPEND_AFTER)"
echo "  native pg_ctl: runuser pg_ctl start -w + first row; native direct: postgres exec'd as postgres, postmaster.pid polled every 1 ms, first row"
echo "  neonfs: through the suspended endpoint's listener; daemon: its last_cold_start_ns (mount + Postgres ready); mount: its part"
printf '%5s %8s %8s | %15s %15s | %15s %15s %11s | %9s %9s\n' scale "db size" variant "native pg_ctl" "native direct" \
	neonfs daemon "mount p50" "/pg_ctl" "/direct"
for s in $SCALES; do
	for v in $VARIANTS; do
		# shellcheck disable=SC2086 # space-separated lists
		{
			a=$(med ${N_CTL[$s,$v]}) b=$(med ${N_DIRECT[$s,$v]}) c=$(med ${NEON[$s,$v]})
			printf '%5s %8s %8s | %6.0f / %6.0f %6.0f / %6.0f | %6.0f / %6.0f %6.0f / %6.0f %8.0f ms | %9s %9s\n' "$s" "${DBSIZE[$s]// /}" "$v" \
				"$a" "$(p90 ${N_CTL[$s,$v]})" "$b" "$(p90 ${N_DIRECT[$s,$v]})" \
				"$c" "$(p90 ${NEON[$s,$v]})" "$(med ${DAEMON[$s,$v]})" "$(p90 ${DAEMON[$s,$v]})" "$(med ${MOUNT[$s,$v]})" \
				"$(ratio "$c" "$a")" "$(ratio "$c" "$b")"
		}
	done
done
echo
echo "where the time goes (medians of the per-round parts, ms):"
printf '%5s %8s | %8s %22s %20s | %22s %20s\n' scale variant "mount" "neonfs pg start+ready" "connect..first row" \
	"native pg start+ready" "connect..first row"
for s in $SCALES; do
	for v in $VARIANTS; do
		# shellcheck disable=SC2086
		{
			nd=$(printf '%s\n' ${N_DIRECT[$s,$v]} | paste -d' ' - <(printf '%s\n' ${N_DIRECT_CONN[$s,$v]}) | awk '{ print $1 - $2 }' | quantile 0.5)
			printf '%5s %8s | %8.0f %22.0f %20.0f | %22.0f %20.0f\n' "$s" "$v" "$(med ${MOUNT[$s,$v]})" "$(med ${PGREADY[$s,$v]})" \
				"$(med ${AFTER[$s,$v]})" "$nd" "$(med ${N_DIRECT_CONN[$s,$v]})"
		}
	done
done
echo "  neonfs: pg start+ready is the daemon's figure less the mount; connect..first row the client's less the daemon's"
echo "  (the client's connect before the wake, the readiness check's lag, the proxy, a backend, SCRAM, the query)."
echo "  native (direct): start+ready is the client's total less its connect; connect..first row that connect."
echo
echo "per-round ms:"
for s in $SCALES; do
	for v in $VARIANTS; do
		echo "  s$s $v native pg_ctl:${N_CTL[$s,$v]}  (pg_ctl itself:${N_CTL_CMD[$s,$v]})"
		echo "  s$s $v native direct:${N_DIRECT[$s,$v]}"
		echo "  s$s $v neonfs:       ${NEON[$s,$v]}"
		echo "  s$s $v daemon:       ${DAEMON[$s,$v]}"
		echo "  s$s $v mount:        ${MOUNT[$s,$v]}"
	done
done
echo
echo "client's own cost, warm (server running), median of $WARM_N, ms:"
printf '%5s %22s %22s %26s\n' scale "coldstart -> endpoint" "coldstart -> native" "psql process -> endpoint"
for s in $SCALES; do
	printf '%5s %22s %22s %26s\n' "$s" "${W_NEON[$s]}" "${W_NATIVE[$s]}" "${W_PSQL[$s]}"
done
echo
echo "neonfs serve RSS, MiB (goal: suspended <= 64):"
printf '%5s %18s %18s %26s\n' scale "active p50 (max)" "suspended p50 (max)" "suspended, final (+5 s)"
for s in $SCALES; do
	# shellcheck disable=SC2086
	printf '%5s %18s %18s %26s\n' "$s" "$(med ${RSS_ACT[$s]}) ($(printf '%s\n' ${RSS_ACT[$s]} | quantile 1))" \
		"$(med ${RSS_SUS[$s]}) ($(printf '%s\n' ${RSS_SUS[$s]} | quantile 1))" "${RSS_FINAL[$s]}"
done
echo "total run time $(((SECONDS - START) / 60))m$(((SECONDS - START) % 60))s"
