package sqlproxy

import "net/http"

// wsHandler serves Postgres's protocol over a WebSocket (placeholder: to
// be written).
type wsHandler struct {
	b    Backend
	opts HTTPOptions
}

func newWSHandler(b Backend, opts HTTPOptions) *wsHandler { return &wsHandler{b: b, opts: opts} }

func (h *wsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "not yet", http.StatusNotImplemented)
}

func (h *wsHandler) close() {}
