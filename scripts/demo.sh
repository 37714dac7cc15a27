#!/usr/bin/env bash
# neonfs demo: a volume in /var/lib/neonfs/$NEONFS_VOLUME (default "vol"),
# mounted at /mnt/neonfs, with a stock Postgres 15 running on it.
#
#   scripts/demo.sh start [BIN]   (what `make demo` runs; BIN defaults to ./neonfs)
#   scripts/demo.sh stop  [BIN]   (what `make demo-stop` runs)
#
# With systemd running, the volume is mounted by neonfs-mount@VOL.service (at
# /mnt/neonfs-VOL, with /mnt/neonfs a symlink to it) and Postgres runs as
# neonfs-postgres@VOL.service. Without systemd, the daemon runs in the
# background with nohup and Postgres is started with pg_ctl.
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-start}
BIN=$(realpath "${2:-./neonfs}")
VOL=${NEONFS_VOLUME:-vol}
DATA=/var/lib/neonfs/$VOL
PGBIN=/usr/lib/postgresql/15/bin
PIDFILE=/run/neonfs-$VOL.pid
DAEMON_LOG=/var/log/neonfs-$VOL.log
PG_LOG=/var/log/postgresql/neonfs-$VOL.log
SOCKDIR=/run/postgresql

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it mounts a file system)" >&2; exit 1; }

use_systemd() {
	local state
	state=$(systemctl is-system-running 2>/dev/null || true)
	case $state in running | degraded | starting) return 0 ;; *) return 1 ;; esac
}

if use_systemd; then
	MNT=/mnt/neonfs-$VOL
else
	MNT=/mnt/neonfs
fi
PGDATA=$MNT/pgdata

as_postgres() { runuser -u postgres -- "$@"; }

wait_mounted() {
	local i
	for i in $(seq 1 600); do
		if mountpoint -q "$MNT"; then return 0; fi
		if [ -n "${1:-}" ] && ! kill -0 "$1" 2>/dev/null; then
			echo "demo: neonfs mount exited; see $DAEMON_LOG:" >&2
			tail -n 20 "$DAEMON_LOG" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	echo "demo: $MNT did not get mounted within 60s" >&2
	return 1
}

port_free() {
	local port=$1
	[ ! -e "$SOCKDIR/.s.PGSQL.$port" ] || return 1
	! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

pg_running() { [ -f "$PGDATA/PG_VERSION" ] && as_postgres "$PGBIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; }

configured_port() { sed -n "s/^port = \([0-9]*\).*/\1/p" "$PGDATA/neonfs-demo.conf" 2>/dev/null | tail -n 1; }

print_connection() {
	local port=$1
	cat <<-MSG

	neonfs volume $VOL ($DATA) is mounted at $MNT; Postgres data directory: $PGDATA
	Connect with:
	    psql "postgresql://postgres@127.0.0.1:$port/postgres"
	Connection string: postgresql://postgres@127.0.0.1:$port/postgres
	(trust authentication on 127.0.0.1 only: this is a demo.)
	Stop with: make demo-stop
	MSG
}

start() {
	[ -x "$BIN" ] || { echo "demo: $BIN not found; run make build" >&2; exit 1; }

	# 1. The volume.
	mkdir -p /var/lib/neonfs
	if [ ! -d "$DATA" ] || [ -z "$(ls -A "$DATA")" ]; then
		echo "demo: initialising volume $DATA"
		"$BIN" init --data "$DATA"
	fi

	# 2. The mount.
	mkdir -p "$MNT"
	if mountpoint -q "$MNT"; then
		echo "demo: $MNT is already mounted"
	elif use_systemd; then
		echo "demo: mounting with systemd (neonfs-mount@$VOL.service)"
		install -m 0755 "$BIN" /usr/local/bin/neonfs
		install -m 0644 systemd/neonfs-mount@.service systemd/neonfs-postgres@.service /etc/systemd/system/
		systemctl daemon-reload
		systemctl start "neonfs-mount@$VOL.service"
		wait_mounted
		if [ ! -e /mnt/neonfs ] || [ -L /mnt/neonfs ]; then ln -sfn "$MNT" /mnt/neonfs; fi
	else
		echo "demo: mounting in the background (no systemd); log in $DAEMON_LOG"
		nohup "$BIN" mount --data "$DATA" "$MNT" >>"$DAEMON_LOG" 2>&1 </dev/null &
		echo $! >"$PIDFILE"
		wait_mounted "$(cat "$PIDFILE")"
	fi

	# 3. The Postgres cluster.
	if [ ! -f "$PGDATA/PG_VERSION" ]; then
		echo "demo: initdb in $PGDATA"
		mkdir -p "$PGDATA"
		chown postgres:postgres "$PGDATA"
		chmod 0700 "$PGDATA"
		(cd / && as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust \
			--encoding=UTF8 --locale=C.UTF-8 --data-checksums >/dev/null)
		echo "include_if_exists = 'neonfs-demo.conf'" | as_postgres tee -a "$PGDATA/postgresql.conf" >/dev/null
	fi
	mkdir -p "$SOCKDIR" "$(dirname "$PG_LOG")"
	chown postgres:postgres "$SOCKDIR" "$(dirname "$PG_LOG")"
	chmod 2775 "$SOCKDIR"

	if pg_running; then
		echo "demo: Postgres is already running on $PGDATA"
		print_connection "$(configured_port)"
		return
	fi

	# 4. Postgres on 5432 or the next free port.
	local port=5432
	while ! port_free "$port"; do port=$((port + 1)); done
	as_postgres tee "$PGDATA/neonfs-demo.conf" >/dev/null <<-CONF
	# Written by scripts/demo.sh.
	port = $port
	listen_addresses = '127.0.0.1'
	unix_socket_directories = '$SOCKDIR'
	shared_buffers = 128MB
	CONF

	if use_systemd; then
		echo "demo: starting Postgres (neonfs-postgres@$VOL.service) on port $port"
		systemctl start "neonfs-postgres@$VOL.service"
	else
		echo "demo: starting Postgres on port $port; log in $PG_LOG"
		(cd / && as_postgres "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$PG_LOG" -w -t 600)
	fi
	print_connection "$port"
}

stop() {
	if use_systemd && systemctl is-active --quiet "neonfs-mount@$VOL.service"; then
		systemctl stop "neonfs-postgres@$VOL.service" "neonfs-mount@$VOL.service"
		echo "demo: stopped neonfs-postgres@$VOL and neonfs-mount@$VOL"
		return
	fi
	if mountpoint -q "$MNT" && pg_running; then
		(cd / && as_postgres "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 600)
	fi
	if [ -f "$PIDFILE" ]; then
		local pid i
		pid=$(cat "$PIDFILE")
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid"
			for i in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			if kill -0 "$pid" 2>/dev/null; then
				echo "demo: neonfs (pid $pid) did not exit within 60s of SIGTERM" >&2
				exit 1
			fi
		fi
		rm -f "$PIDFILE"
	fi
	if mountpoint -q "$MNT"; then
		echo "demo: $MNT is still mounted; unmounting lazily" >&2
		umount -l "$MNT"
	fi
	echo "demo: stopped"
}

case $action in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop [BIN]" >&2; exit 2 ;;
esac
