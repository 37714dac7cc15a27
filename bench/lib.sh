# Shared helpers for the bench scripts (sourced, not run). They expect PGBIN
# and, for pg_start, SOCK (the Unix socket directory) to be set.

# bench_workdir NAME: sets WORK (a fresh dir under /var/tmp) and, in it, SOCK
# and LOGS, both writable by postgres.
bench_workdir() {
	WORK=$(mktemp -d "/var/tmp/neonfs-$1.XXXXXX")
	chmod 0755 "$WORK"
	SOCK=$WORK/sock
	LOGS=$WORK/logs
	mkdir -m 0755 "$SOCK" "$LOGS"
	chown postgres:postgres "$SOCK" "$LOGS"
}

# need_pg BINARY...: exits unless each Postgres binary is in $PGBIN.
need_pg() {
	local b
	for b in "$@"; do
		[ -x "$PGBIN/$b" ] || { echo "bench: $PGBIN/$b not found; run scripts/deps.sh" >&2; exit 1; }
	done
}

# need_tools TOOL...: exits unless each tool is in PATH.
need_tools() {
	local b
	for b in "$@"; do
		command -v "$b" >/dev/null || { echo "bench: $b not found (apt-get install $b)" >&2; exit 1; }
	done
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
	local port=$((20000 + RANDOM % 20000))
	while ! port_free "$port"; do port=$((port + 1)); done
	echo "$port"
}

# pg_start PGDATA LOG PORT [EXTRA]: EXTRA is more postgres options
# ("-c wal_sync_method=open_datasync").
pg_start() {
	as_postgres "$PGBIN/pg_ctl" start -D "$1" -l "$2" -w -t 600 \
		-o "-c port=$3 -c listen_addresses='' -c unix_socket_directories=$SOCK -c shared_buffers=128MB -c max_wal_size=1GB ${4:-}" >/dev/null
}

pg_stop() { as_postgres "$PGBIN/pg_ctl" stop -D "$1" -m fast -w -t 600 >/dev/null; }

# stop_postgres PGDATA: immediate stop of a server that may be running, for
# cleanup; kills it if pg_ctl cannot.
stop_postgres() {
	local d=$1 pid
	[ -f "$d/postmaster.pid" ] || return 0
	pid=$(head -n 1 "$d/postmaster.pid" 2>/dev/null)
	(cd / && timeout 60 runuser -u postgres -- "$PGBIN/pg_ctl" stop -D "$d" -m immediate -w -t 30 >/dev/null 2>&1)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		pkill -KILL -P "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
	fi
	return 0
}

# stop_pid PID: SIGTERM, up to 60s, then SIGKILL.
stop_pid() {
	local pid=$1
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
}

# wait_mounted MOUNTPOINT PID LOG [SECONDS]: until MOUNTPOINT is mounted
# (default 60 s); fails with LOG if PID, the daemon serving it, exits first.
wait_mounted() {
	local i
	for ((i = 0; i < ${4:-60} * 10; i++)); do
		mountpoint -q "$1" && return 0
		kill -0 "$2" 2>/dev/null || { echo "bench: the daemon for $1 exited:" >&2; cat "$3" >&2; exit 1; }
		sleep 0.1
	done
	echo "bench: $1 not mounted after ${4:-60}s" >&2
	cat "$3" >&2
	exit 1
}

# median N...: the median of the numbers given.
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# mounts_under DIR: mountpoints beneath DIR, innermost first.
mounts_under() { awk -v d="$1/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }

# unmount_and_remove DIR: lazily unmount everything beneath DIR, then delete
# it, unless something is still mounted there.
unmount_and_remove() {
	local m
	for m in $(mounts_under "$1"); do
		umount -l "$m" || fusermount3 -uz "$m"
	done
	if [ -z "$(mounts_under "$1")" ]; then
		rm -rf "$1"
	else
		echo "bench: leaving $1: something is still mounted beneath it" >&2
	fi
}

# neonfs_binary WORK: sets BIN to $NEONFS_BIN, or to a fresh build in WORK.
neonfs_binary() {
	if [ -n "${NEONFS_BIN:-}" ]; then
		BIN=$(realpath "$NEONFS_BIN")
	else
		echo "bench: building neonfs" >&2
		go build -o "$1/neonfs" .
		BIN=$1/neonfs
	fi
}

# neonfs_settle BIN VOL: wait (up to 120 s) until the daemon serving VOL runs
# no flush or merge and its memtable stopped changing, so a timed workload
# starts from a quiet volume rather than the tail of the previous one.
neonfs_settle() {
	local bin=$1 vol=$2 last="" cur i
	for i in $(seq 1 120); do
		cur=$("$bin" status --data "$vol" --json | tr -d ' \n' | grep -o '"memtable_bytes":[0-9]*\|"flushing":[a-z]*' | tr '\n' ' ')
		if [ "$cur" = "$last" ] && [[ $cur == *'"flushing":false'* ]]; then
			echo "bench: settled after ${i}s ($cur)" >&2
			return
		fi
		last=$cur
		sleep 1
	done
	echo "bench: daemon still busy after 120s ($cur); going on anyway" >&2
}
