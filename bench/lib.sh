# Shared helpers for the bench scripts (sourced, not run).

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
