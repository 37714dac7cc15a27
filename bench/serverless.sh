#!/usr/bin/env bash
# Neon's serverless driver against a neonfs endpoint, beside a TCP client
# in the same run: connect to the first row of `SELECT 1` over the
# WebSocket (Pool), over SQL over HTTP (neon()) and over TCP (pgx, as psql
# connects), warm (Postgres running) and from suspended (`endpoint
# suspend` before each round), median and p90 of $RUNS, the three
# alternating round by round (each a fresh client process, as an edge
# function invocation is; warm also within one Node process); then
# point-query throughput with 8 concurrent clients over HTTP (the driver
# under Node, and Go's HTTP client) vs pgx over TCP (medians of 3
# alternating rounds of $SECONDS_PER_ROUND s).
#
#   sudo bench/serverless.sh
#   sudo RUNS=5 SECONDS_PER_ROUND=5 bench/serverless.sh
#
# Environment: RUNS (10), SECONDS_PER_ROUND (10), NEONFS_BIN (build from the
# repo), PGBIN (/usr/lib/postgresql/15/bin). Needs node and npm (the driver
# is installed with npm ci in bench/serverless on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

RUNS=${RUNS:-10}
SECS=${SECONDS_PER_ROUND:-10}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts a file system and runs Postgres as postgres)" >&2; exit 1; }
command -v node >/dev/null || { echo "bench: node not found" >&2; exit 1; }
[ -x "$PGBIN/pgbench" ] || { echo "bench: $PGBIN/pgbench not found; run scripts/deps.sh" >&2; exit 1; }

if [ ! -d bench/serverless/node_modules/@neondatabase/serverless ]; then
	echo "bench: installing the serverless driver (npm ci in bench/serverless)" >&2
	(cd bench/serverless && npm ci --no-audit --no-fund --loglevel=error)
fi

bench_workdir serverless
SERVE_PID=""
cleanup() {
	local rc=$?
	set +e
	[ -n "$SERVE_PID" ] && stop_pid "$SERVE_PID"
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

neonfs_binary "$WORK"
go build -o "$WORK/coldstart" ./bench/coldstart
go build -o "$WORK/pgxtput" ./bench/serverless/pgxtput
quantile() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { r = int(q * NR + 0.999999); if (r < 1) r = 1; print v[r] }'; }

VOL=$WORK/volume
"$BIN" init --data "$VOL" >/dev/null
"$BIN" serve --data "$VOL" --run-dir "$WORK/run" >"$LOGS/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 600); do "$BIN" endpoint list --data "$VOL" >/dev/null 2>&1 && break; sleep 0.1; done
HTTP=127.0.0.1:$(free_port)
URL=$("$BIN" endpoint create main --data "$VOL" --suspend-after 0 --http "$HTTP" 2>/dev/null)
export DATABASE_URL=$URL NEONFS_HTTP=$HTTP COLDSTART_URL=$URL
# pgbench takes the password from PGPASSWORD, never argv.
rest=${URL#postgres://postgres:}
PGPW=${rest%%@*}
hostport=${rest#*@}
hostport=${hostport%%/*}
echo "bench: pgbench -i -s 1 through the endpoint (first start: initdb)" >&2
PGPASSWORD=$PGPW "$PGBIN/pgbench" -i -s 1 -q -h "${hostport%:*}" -p "${hostport##*:}" -U postgres postgres >/dev/null 2>&1

# one KIND: prints ms to the first row over tcp, ws or http.
one() {
	case $1 in
	tcp) "$WORK/coldstart" -n 1 | awk '{ print $1 }' ;;
	ws) (cd bench/serverless && MODE=ws ROUNDS=1 node first.mjs) ;;
	http) (cd bench/serverless && MODE=http ROUNDS=1 node first.mjs) ;;
	esac
}
# Warm, within one Node process (its own first request, which sets up
# fetch or the WebSocket machinery, dropped): the endpoint's cost without
# a fresh process's.
inproc() { (cd bench/serverless && MODE=$1 ROUNDS=$((RUNS + 1)) node first.mjs) | tail -n +2 | tr '\n' ' '; }
one tcp >/dev/null
INPROC_WS=$(inproc ws)
INPROC_HTTP=$(inproc http)
declare -A T
for state in warm suspended; do
	for kind in tcp ws http; do T[$state-$kind]=""; done
	echo "bench: first row, $state, $RUNS rounds" >&2
	for i in $(seq 1 "$RUNS"); do
		for kind in tcp ws http; do
			if [ "$state" = suspended ]; then
				"$BIN" endpoint suspend main --data "$VOL" >/dev/null
			else
				one tcp >/dev/null # make sure Postgres runs
			fi
			T[$state-$kind]+="$(one "$kind") "
		done
	done
done

echo "bench: throughput, 8 clients, 3 rounds of ${SECS}s each way" >&2
one tcp >/dev/null
TP_TCP="" TP_HTTP="" TP_GOHTTP=""
for i in 1 2 3; do
	TP_TCP+="$(CLIENTS=8 TPUT_SECONDS=$SECS "$WORK/pgxtput") "
	TP_HTTP+="$(cd bench/serverless && CLIENTS=8 TPUT_SECONDS=$SECS node tput.mjs) "
	TP_GOHTTP+="$(MODE=http CLIENTS=8 TPUT_SECONDS=$SECS "$WORK/pgxtput") "
done

stat() { tr ' ' '\n' | grep -v '^$' | quantile "$1"; }
echo
echo "connect to the first row of SELECT 1 (ms; median / p90 of $RUNS; client-side timing)"
printf '%-10s %18s %18s %18s\n' state "TCP (pgx)" "WebSocket (Pool)" "HTTP (neon())"
for state in warm suspended; do
	printf '%-10s' "$state"
	for kind in tcp ws http; do
		printf ' %18s' "$(echo "${T[$state-$kind]}" | stat 0.5) / $(echo "${T[$state-$kind]}" | stat 0.9)"
	done
	echo
done
echo "warm within one Node process (first request dropped): WebSocket $(echo "$INPROC_WS" | stat 0.5) / $(echo "$INPROC_WS" | stat 0.9), HTTP $(echo "$INPROC_HTTP" | stat 0.5) / $(echo "$INPROC_HTTP" | stat 0.9)"
echo "raw: $(for k in "${!T[@]}"; do echo "$k: ${T[$k]}"; done | sort | tr '\n' ';')"
tcp_med=$(echo "$TP_TCP" | stat 0.5)
http_med=$(echo "$TP_HTTP" | stat 0.5)
echo
gohttp_med=$(echo "$TP_GOHTTP" | stat 0.5)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "point queries/s, 8 clients: pgx over TCP $tcp_med ($TP_TCP)"
echo "  SQL over HTTP, the driver's neon() under Node: $http_med ($TP_HTTP), /TCP $(ratio "$http_med" "$tcp_med")"
echo "  SQL over HTTP, Go's HTTP client (the endpoint without Node's cost): $gohttp_med ($TP_GOHTTP), /TCP $(ratio "$gohttp_med" "$tcp_med")"
