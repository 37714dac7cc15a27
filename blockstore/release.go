package blockstore

// DropCache empties the block cache and drops the buffer kept for encoding
// the next layer (up to 512 MiB after a big flush: most of a suspended
// daemon's heap at pgbench scale 50); reads and the next flush allocate
// again. fastcache keeps the chunks it frees on a free list of its own,
// mapped: those stay resident (at most the cache's size) for its next use.
func (s *Store) DropCache() {
	s.cache.Reset()
	s.encMu.Lock()
	s.encBuf = nil
	s.encMu.Unlock()
}
