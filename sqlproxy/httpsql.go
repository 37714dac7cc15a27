package sqlproxy

import "net/http"

// sqlHandler serves SQL over HTTP (placeholder: to be written).
type sqlHandler struct {
	b    Backend
	opts HTTPOptions
}

func newSQLHandler(b Backend, opts HTTPOptions) *sqlHandler { return &sqlHandler{b: b, opts: opts} }

func (h *sqlHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "not yet", http.StatusNotImplemented)
}

func (h *sqlHandler) closeIdle() {}
