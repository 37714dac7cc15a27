// Package metrics exports a daemon's state to Prometheus (`--metrics
// ADDR`, GET /metrics). It reads a Source at scrape time and turns what
// it returns into const metrics: the storage and compute packages keep
// plain counters and hist.Histograms and never import Prometheus.
package metrics

import (
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/neonfs/neonfs/endpoint"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/volume"
)

// EndpointStats is one endpoint as a scrape sees it.
type EndpointStats struct {
	Info       endpoint.Info
	ColdStarts hist.Snapshot // seconds from a wake's start to Postgres ready
}

// Source is what a scrape reads. The funcs are called on every scrape,
// so they must be cheap and must not wait on the network; any may be
// nil.
type Source struct {
	Volume    func() volume.Metrics
	Endpoints func() []EndpointStats
	// FuseRequests are the FUSE requests answered, by go-fuse's opcode
	// name, with the time the file system took.
	FuseRequests func() []hist.Timing
}

// Handler serves src in the Prometheus text format, with the Go runtime's
// and the process's metrics, from a registry of its own (not the global
// one).
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("neonfs_"+name, help, labels, nil)
}

// The volume's metrics.
var (
	commits       = desc("commits_total", "Log entries committed (each one fdatasync of the log).")
	commitBytes   = desc("commit_bytes_total", "Encoded bytes of the log entries committed.")
	commitPuts    = desc("commit_puts_total", "Block and inode puts committed.")
	commitRetries = desc("commit_retries_total", "Commits retried after a failure (a full or stalled disk).")
	commitSeconds = desc("commit_seconds_total", "Time spent committing log entries.")
	batchPuts     = desc("commit_batch_puts", "Puts per committed log entry (group commit).")
	batchBytes    = desc("commit_batch_bytes", "Encoded bytes per committed log entry.")
	pendingBytes  = desc("commit_pending_bytes", "Changes accepted but not yet committed.")
	fsyncSeconds  = desc("fsync_seconds", "Time an fsync took.")
	logSyncs      = desc("log_sync_seconds", "Time each fdatasync of the log took on this node's disk: the disk's share of a commit (compare sync_write_seconds).")
	syncWrites    = desc("sync_write_seconds", "Time a write to a file fsynced lately (Postgres's WAL) waited for its commit: such writes return committed, so their fsyncs find little to wait for.")

	blockCacheHits   = desc("block_cache_hits_total", "Reads of layer records served by the in-memory block cache.")
	blockCacheMisses = desc("block_cache_misses_total", "Reads of layer records that went to the object store (or the layer cache).")
	layerCacheHits   = desc("layer_cache_hits_total", "Layer chunks read from the on-disk layer cache (S3 volumes).")
	layerCacheMisses = desc("layer_cache_misses_total", "Layer chunks fetched from the remote object store (S3 volumes).")
	layerCacheEvicts = desc("layer_cache_evictions_total", "Layer chunks evicted from the on-disk layer cache (S3 volumes).")
	layerCacheBytes  = desc("layer_cache_bytes", "Bytes on disk in the layer cache (S3 volumes).")
	layerCacheLimit  = desc("layer_cache_limit_bytes", "The layer cache's bound (S3 volumes).")

	layers        = desc("layers", "Layer objects in the block map.")
	layerBytes    = desc("layer_bytes", "Bytes of the layer objects in the block map.")
	memtableBytes = desc("memtable_bytes", "Bytes in the memtable: committed to the log, in no layer yet. segment is active or frozen (waiting for its flush).", "segment")
	committedLSN  = desc("committed_lsn", "The newest log entry applied to the block map.")
	flushedLSN    = desc("flushed_lsn", "The newest log entry a layer covers.")
	flushLag      = desc("flush_lag_entries", "Log entries applied but in no layer yet (committed_lsn - flushed_lsn).")
	flushing      = desc("flushing", "1 while a flush, merge or gc runs.")
	flushFailing  = desc("flush_failing", "1 when the last flush failed (it is retried; writes wait past --max-unflushed-mb).")
	mounts        = desc("mounts", "Branches mounted (read-write and time-travel).")
	diskFull      = desc("disk_full", "1 while writes are refused with ENOSPC.")
	stopped       = desc("stopped", "1 when a committed log entry could not be applied: the volume accepts no writes.")
	takenOver     = desc("taken_over", "1 when a newer writer (a restored copy) owns the object store.")
)

// The endpoints' metrics, by branch.
var (
	endpointState   = desc("endpoint_state", "1 for the endpoint's current state, 0 for the others.", "branch", "state")
	endpointConns   = desc("endpoint_connections", "Client connections being relayed.", "branch")
	endpointRelayed = desc("endpoint_relayed_connections_total", "Client connections handed to Postgres.", "branch")
	endpointColds   = desc("endpoint_cold_start_seconds", "Time from a wake's start (mount, initdb if new, start) to Postgres ready.", "branch")
)

// The FUSE requests, by opcode.
var (
	fuseRequests       = desc("fuse_requests_total", "FUSE requests answered, by opcode (WRITE, SETATTR, FSYNC, ...).", "op")
	fuseRequestSeconds = desc("fuse_request_seconds_total", "Time the file system took to answer FUSE requests, by opcode.", "op")
)

// endpointStates are the states endpoint_state reports for every branch.
var endpointStates = []endpoint.State{endpoint.Suspended, endpoint.Waking, endpoint.Active, endpoint.Suspending, endpoint.Stopped}

type collector struct{ src Source }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{commits, commitBytes, commitPuts, commitRetries, commitSeconds, batchPuts,
		batchBytes, pendingBytes, fsyncSeconds, syncWrites, logSyncs, blockCacheHits, blockCacheMisses, layerCacheHits,
		layerCacheMisses, layerCacheEvicts, layerCacheBytes, layerCacheLimit, layers, layerBytes, memtableBytes,
		committedLSN, flushedLSN, flushLag, flushing, flushFailing, mounts, diskFull, stopped, takenOver,
		endpointState, endpointConns, endpointRelayed, endpointColds, fuseRequests, fuseRequestSeconds} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Volume != nil {
		collectVolume(ch, c.src.Volume())
	}
	if c.src.Endpoints != nil {
		eps := c.src.Endpoints()
		sort.Slice(eps, func(i, j int) bool { return eps[i].Info.Branch < eps[j].Info.Branch })
		for _, e := range eps {
			collectEndpoint(ch, e)
		}
	}
	if c.src.FuseRequests != nil {
		for _, r := range c.src.FuseRequests() {
			send(ch, fuseRequests, prometheus.CounterValue, float64(r.Count), r.Name)
			send(ch, fuseRequestSeconds, prometheus.CounterValue, r.Seconds, r.Name)
		}
	}
}

func collectVolume(ch chan<- prometheus.Metric, m volume.Metrics) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		send(ch, d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		send(ch, d, prometheus.GaugeValue, v, labels...)
	}
	counter(commits, float64(m.Commits.Entries))
	counter(commitBytes, float64(m.Commits.Bytes))
	counter(commitPuts, float64(m.Commits.Puts))
	counter(commitRetries, float64(m.Commits.Retries))
	counter(commitSeconds, m.Commits.Seconds)
	histogram(ch, batchPuts, m.BatchPuts)
	histogram(ch, batchBytes, m.BatchBytes)
	gauge(pendingBytes, float64(m.PendingBytes))
	histogram(ch, fsyncSeconds, m.Fsyncs)
	histogram(ch, syncWrites, m.SyncWrites)
	histogram(ch, logSyncs, m.LogSyncs)

	counter(blockCacheHits, float64(m.BlockCacheHits))
	counter(blockCacheMisses, float64(m.BlockCacheMisses))
	if lc := m.LayerCache; lc != nil {
		counter(layerCacheHits, float64(lc.Hits))
		counter(layerCacheMisses, float64(lc.Misses))
		counter(layerCacheEvicts, float64(lc.Evictions))
		gauge(layerCacheBytes, float64(lc.Bytes))
		gauge(layerCacheLimit, float64(lc.Limit))
	}

	gauge(layers, float64(m.Layers))
	gauge(layerBytes, float64(m.LayerBytes))
	gauge(memtableBytes, float64(m.MemtableBytes), "active")
	gauge(memtableBytes, float64(m.FrozenBytes), "frozen")
	gauge(committedLSN, float64(m.CommittedLSN))
	gauge(flushedLSN, float64(m.FlushedLSN))
	gauge(flushLag, float64(m.CommittedLSN-min(m.FlushedLSN, m.CommittedLSN)))
	gauge(flushing, bit(m.Flushing))
	gauge(flushFailing, bit(m.FlushFailing))
	gauge(mounts, float64(m.Mounts))
	gauge(diskFull, bit(m.DiskFull))
	gauge(stopped, bit(m.Stopped))
	gauge(takenOver, bit(m.TakenOver))
}

func collectEndpoint(ch chan<- prometheus.Metric, e EndpointStats) {
	b := e.Info.Branch
	known := false
	for _, s := range endpointStates {
		known = known || s == e.Info.State
		send(ch, endpointState, prometheus.GaugeValue, bit(s == e.Info.State), b, string(s))
	}
	if !known { // a state newer than this list
		send(ch, endpointState, prometheus.GaugeValue, 1, b, string(e.Info.State))
	}
	send(ch, endpointConns, prometheus.GaugeValue, float64(e.Info.Connections), b)
	send(ch, endpointRelayed, prometheus.CounterValue, float64(e.Info.Relayed), b)
	histogram(ch, endpointColds, e.ColdStarts, b)
}

// send reports a metric, or the error that made it invalid (a label that
// is not UTF-8) without failing the rest of the scrape.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func histogram(ch chan<- prometheus.Metric, d *prometheus.Desc, s hist.Snapshot, labels ...string) {
	m, err := prometheus.NewConstHistogram(d, s.Count, s.Sum, s.Cumulative(), labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
