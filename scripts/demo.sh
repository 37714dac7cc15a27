#!/usr/bin/env bash
# neonfs demo: a volume in /var/lib/neonfs/$NEONFS_VOLUME (default "vol")
# served by `neonfs serve`, with an endpoint for branch main: Postgres 15
# runs on the branch when a client connects and is suspended after 5
# minutes without activity.
#
#   scripts/demo.sh start [BIN]   (what `make demo` runs; BIN defaults to ./neonfs)
#   scripts/demo.sh stop  [BIN]   (what `make demo-stop` runs)
#
# With systemd running, the daemon runs as neonfs@VOL.service (written by
# `neonfs systemd install`); without, in the background with nohup.
# Installs only what the demo needs: Debian's Postgres 15, if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-start}
BIN=$(realpath "${2:-./neonfs}")
VOL=${NEONFS_VOLUME:-vol}
DATA=/var/lib/neonfs/$VOL
PGBIN=/usr/lib/postgresql/15/bin
PIDFILE=/run/neonfs-$VOL.pid
DAEMON_LOG=/var/log/neonfs-$VOL.log

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it mounts a file system)" >&2; exit 1; }

use_systemd() {
	local state
	state=$(systemctl is-system-running 2>/dev/null || true)
	case $state in running | degraded | starting) return 0 ;; *) return 1 ;; esac
}

daemon_answers() { "$BIN" endpoint list --data "$DATA" >/dev/null 2>&1; }

wait_daemon() {
	local i pid=${1:-}
	for i in $(seq 1 600); do
		if daemon_answers; then return 0; fi
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			echo "demo: neonfs serve exited; see $DAEMON_LOG:" >&2
			tail -n 20 "$DAEMON_LOG" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	echo "demo: the daemon of $DATA did not answer within 60s" >&2
	return 1
}

start() {
	[ -x "$BIN" ] || { echo "demo: $BIN not found; run make build" >&2; exit 1; }
	if [ ! -x "$PGBIN/postgres" ] || ! id postgres >/dev/null 2>&1; then
		echo "demo: installing Postgres 15 (Debian's postgresql)"
		DEBIAN_FRONTEND=noninteractive apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
	fi

	# 1. The volume.
	mkdir -p /var/lib/neonfs
	if [ ! -d "$DATA" ] || [ -z "$(ls -A "$DATA")" ]; then
		echo "demo: initialising volume $DATA"
		"$BIN" init --data "$DATA"
	fi

	# 2. The daemon.
	if daemon_answers; then
		echo "demo: the daemon of $DATA is already running"
	elif use_systemd; then
		echo "demo: starting the daemon with systemd (neonfs@$VOL.service)"
		install -m 0755 "$BIN" /usr/local/bin/neonfs
		/usr/local/bin/neonfs systemd install --volume "$VOL" --data "$DATA" >/dev/null
		systemctl daemon-reload
		systemctl enable --now "neonfs@$VOL.service"
		wait_daemon
	else
		echo "demo: starting the daemon in the background (no systemd); log in $DAEMON_LOG"
		nohup "$BIN" serve --data "$DATA" >>"$DAEMON_LOG" 2>&1 </dev/null &
		echo $! >"$PIDFILE"
		wait_daemon "$(cat "$PIDFILE")"
	fi

	# 3. The endpoint of main (initdb happens at its first connection).
	local url
	if url=$("$BIN" connection-string main --data "$DATA" 2>/dev/null); then
		echo "demo: branch main already has an endpoint"
	else
		url=$("$BIN" endpoint create main --data "$DATA" --suspend-after 5m)
	fi
	cat <<-MSG

	neonfs volume $VOL ($DATA) is served; branch main has an endpoint.
	Connection string:
	    $url
	Try:  psql '$url'
	The first connection runs initdb and starts Postgres (a few seconds); after
	5 minutes without activity Postgres is stopped and the branch unmounted, and
	the next connection wakes it. See: $BIN endpoint list --data $DATA
	Stop with: make demo-stop
	MSG
}

stop() {
	if use_systemd && systemctl is-active --quiet "neonfs@$VOL.service"; then
		systemctl stop "neonfs@$VOL.service"
		echo "demo: stopped neonfs@$VOL (its endpoints' Postgres too)"
		return
	fi
	if [ -f "$PIDFILE" ]; then
		local pid i
		pid=$(cat "$PIDFILE")
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid"
			for i in $(seq 1 900); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			if kill -0 "$pid" 2>/dev/null; then
				echo "demo: neonfs (pid $pid) did not exit within 90s of SIGTERM" >&2
				exit 1
			fi
		fi
		rm -f "$PIDFILE"
	fi
	echo "demo: stopped"
}

case $action in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop [BIN]" >&2; exit 2 ;;
esac
