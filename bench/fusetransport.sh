#!/usr/bin/env bash
# What one FUSE request costs on this machine, with nothing behind it:
# bench/fusetransport serves a null file system (one file, FOPEN_DIRECT_IO,
# writes and fsyncs answered at once) three ways, each on its own mount:
#   classic  read(2)/writev(2) on /dev/fuse, 4 reader threads, inline replies
#   uring    FUSE-over-io_uring (Linux 6.14+): a ring per CPU, its thread
#            pinned there, one io_uring_enter per reply-and-next-request
#   gofuse   go-fuse's own request loop and node API, with neonfs's mount
#            options: what the framework neonfs uses adds
# A client process writes 8 KiB with pwrite (and, in the w+fsync rows, an
# fdatasync after each) from 1 or 4 threads for $DURATION seconds. Each row
# prints requests per second and the CPU time per request of the whole
# machine and of the server, medians of $ROUNDS alternating rounds.
#
#   sudo bench/fusetransport.sh
#   sudo ROUNDS=1 DURATION=2 bench/fusetransport.sh   # quick check
#
# The uring server needs the fuse module's enable_uring parameter; the
# script sets it for the run and puts it back. Without it (or on an older
# kernel) the uring rows are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
PARAM=/sys/module/fuse/parameters/enable_uring

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it mounts file systems)" >&2; exit 1; }
bench_workdir fusetransport
echo "bench: building bench/fusetransport" >&2
go build -o "$WORK/fusetransport" ./bench/fusetransport

MODES=(classic gofuse)
OLD_PARAM=""
if [ -w "$PARAM" ]; then
	OLD_PARAM=$(cat "$PARAM")
	echo Y >"$PARAM"
	MODES+=(uring)
else
	echo "bench: $PARAM is not writable here: no io_uring rows" >&2
fi

declare -A PID
cleanup() {
	local rc=$? m
	set +e
	for m in "${MODES[@]}"; do
		[ -n "${PID[$m]:-}" ] && stop_pid "${PID[$m]}"
	done
	[ -n "$OLD_PARAM" ] && echo "$OLD_PARAM" >"$PARAM"
	unmount_and_remove "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for m in "${MODES[@]}"; do
	mkdir "$WORK/$m"
	"$WORK/fusetransport" serve -mode "$m" "$WORK/$m" >"$LOGS/$m.log" 2>&1 &
	PID[$m]=$!
	wait_mounted "$WORK/$m" "${PID[$m]}" "$LOGS/$m.log" 10
done

CASES=("1 write" "4 write" "1 w+fsync" "4 w+fsync")
declare -A OUT
for r in $(seq "$ROUNDS"); do
	for c in "${CASES[@]}"; do
		read -r threads kind <<<"$c"
		flags=()
		[ "$kind" = w+fsync ] && flags=(-fsync)
		for i in "${!MODES[@]}"; do
			m=${MODES[$(((i + r) % ${#MODES[@]}))]}
			line=$("$WORK/fusetransport" client -threads "$threads" -secs "$DURATION" "${flags[@]}" -pid "${PID[$m]}" "$WORK/$m/f")
			echo "bench: round $r, $threads thread(s) $kind, $m: $line" >&2
			OUT[$c/$m]+="$line"$'\n'
		done
	done
done

echo "FUSE requests on a null file system, median of $ROUNDS rounds of ${DURATION}s"
printf '%-18s %-8s %12s %14s %14s\n' case server requests/s machine_us/req server_us/req
for c in "${CASES[@]}"; do
	for m in "${MODES[@]}"; do
		rows=${OUT[$c/$m]}
		printf '%-18s %-8s %12s %14s %14s\n' "$c" "$m" \
			"$(median $(awk '{print $2}' <<<"$rows"))" \
			"$(median $(awk '{print $4}' <<<"$rows"))" \
			"$(median $(awk '{print $6}' <<<"$rows"))"
	done
done
