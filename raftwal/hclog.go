package raftwal

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// hashicorp/raft logs through hclog; its lines go to slog here, with the
// level they had, so the daemon has one log. A peer that is down makes
// raft log the same failure many times a second (every heartbeat and
// append retry): a line identical to one logged in the last repeatEvery,
// numbers aside, is counted instead and the count is logged with the next
// one let through.
const repeatEvery = 10 * time.Second

func hlog() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: raftLines,
		DisableTime: true, IncludeLocation: false})
}

var raftLines = &slogWriter{seen: map[string]*repeat{}}

type repeat struct {
	last    time.Time
	dropped int
}

type slogWriter struct {
	mu   sync.Mutex
	seen map[string]*repeat
}

var digits = regexp.MustCompile(`[0-9]+`)

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		w.line(string(line))
	}
	return len(p), nil
}

func (w *slogWriter) line(s string) {
	level, msg := slog.LevelInfo, strings.TrimSpace(s)
	for _, l := range []struct {
		tag   string
		level slog.Level
	}{{"[ERROR]", slog.LevelError}, {"[WARN]", slog.LevelWarn}, {"[INFO]", slog.LevelInfo}, {"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}} {
		if i := strings.Index(msg, l.tag); i >= 0 {
			level, msg = l.level, strings.TrimSpace(msg[i+len(l.tag):])
			break
		}
	}
	key := digits.ReplaceAllString(msg, "#")
	now := time.Now()
	w.mu.Lock()
	r := w.seen[key]
	if r != nil && now.Sub(r.last) < repeatEvery {
		r.dropped++
		w.mu.Unlock()
		return
	}
	dropped := 0
	if r != nil {
		dropped = r.dropped
	}
	w.seen[key] = &repeat{last: now}
	if len(w.seen) > 1024 {
		for k, v := range w.seen {
			if now.Sub(v.last) >= repeatEvery {
				delete(w.seen, k)
			}
		}
	}
	w.mu.Unlock()
	if dropped > 0 {
		slog.Log(context.Background(), level, msg, "repeated", dropped)
		return
	}
	slog.Log(context.Background(), level, msg)
}
