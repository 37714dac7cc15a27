package blockstore

// DropCache empties the block cache and frees its memory (the daemon went
// idle); reads fill it again.
func (s *Store) DropCache() { s.cache.Reset() }
