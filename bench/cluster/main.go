// Command cluster is bench/cluster.sh's ledger client for the failover
// measurement: it inserts one row per transaction, with ids it numbers
// itself, through whichever of a cluster's endpoints answers, moving on to
// the next port after any error, and times failovers from inside the
// process.
//
//	cluster -ports P1,P2,P3 [-status FILE]
//
// SIGUSR1 arms a failover: the script sends it right after it killed the
// writer, and the client prints the moment of its first commit on a
// connection dialed after the signal, so a reply of the dead writer still
// in the socket cannot count:
//
//	failover UNIX_NS PORT FAILED_ATTEMPTS
//
// where FAILED_ATTEMPTS counts the connects and inserts that failed since
// the signal. -status is rewritten every 100 ms with
//
//	COMMITS LAST_PORT LAST_COMMIT_UNIX_NS ERRORS
//
// so the script can tell commits are flowing and through which port. On
// SIGTERM or SIGINT the client stops and checks the ledger through any
// endpoint that answers: every id whose COMMIT returned must be there.
//
//	ledger acked=N in_doubt=N in_doubt_present=N missing=N
//
// It exits 1 if any acknowledged id is missing. Errors go to stderr, one
// line each with the port. Connections are plain TCP as user postgres with
// trust auth (the bench's endpoints).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// retryPause is the pause after a failed connect or insert before the
// next port is tried: short, so the figure's resolution is fine, but each
// attempt on a follower's suspended endpoint proposes a lease acquire
// through Raft, so not a busy loop.
const retryPause = 50 * time.Millisecond

func main() {
	portsFlag := flag.String("ports", "", "comma-separated endpoint ports on 127.0.0.1")
	statusPath := flag.String("status", "", "rewrite this file every 100 ms with the progress")
	flag.Parse()
	var ports []string
	for _, p := range strings.Split(*portsFlag, ",") {
		if _, err := strconv.Atoi(p); err != nil {
			fail(fmt.Errorf("-ports %q: want comma-separated port numbers", *portsFlag))
		}
		ports = append(ports, p)
	}

	l := &ledger{ports: ports}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			l.arm()
		}
	}()
	if *statusPath != "" {
		go l.writeStatus(ctx, *statusPath)
	}
	l.run(ctx)
	if err := l.verify(); err != nil {
		fail(err)
	}
}

type ledger struct {
	ports []string

	mu       sync.Mutex
	next     int64
	acked    []int64
	inDoubt  []int64
	lastPort string
	lastAt   time.Time
	errors   int
	gen      int // SIGUSR1s received
	reported int // failovers printed
	attempts int // failures since the last SIGUSR1
}

func (l *ledger) arm() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	l.attempts = 0
}

func (l *ledger) url(port string) string {
	return "postgres://postgres@127.0.0.1:" + port + "/postgres?sslmode=disable"
}

func (l *ledger) connect(ctx context.Context, port string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(l.url(port))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 10 * time.Second
	return pgx.ConnectConfig(ctx, cfg)
}

// run inserts until ctx ends. The table is created on the first
// connection that takes a write.
func (l *ledger) run(ctx context.Context) {
	var conn *pgx.Conn
	var connGen int
	var port string
	created := false
	i := 0
	failed := func(what string, err error) {
		if ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		l.errors++
		l.attempts++
		l.mu.Unlock()
		fmt.Fprintf(os.Stderr, "%s cluster: %s on port %s: %v\n", time.Now().UTC().Format("15:04:05.000"), what, port, err)
		time.Sleep(retryPause)
	}
	for ctx.Err() == nil {
		if conn == nil {
			port = l.ports[i%len(l.ports)]
			i++
			l.mu.Lock()
			connGen = l.gen
			l.mu.Unlock()
			c, err := l.connect(ctx, port)
			if err != nil {
				failed("connect", err)
				continue
			}
			conn = c
		}
		if !created {
			_, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
			if err != nil {
				failed("create table", err)
				conn.Close(context.Background())
				conn = nil
				continue
			}
			created = true
		}
		l.mu.Lock()
		l.next++
		id := l.next
		l.mu.Unlock()
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := conn.Exec(qctx, "INSERT INTO ledger (id) VALUES ($1)", id)
		cancel()
		if err != nil {
			l.mu.Lock()
			l.inDoubt = append(l.inDoubt, id)
			l.mu.Unlock()
			failed("insert", err)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		at := time.Now()
		l.mu.Lock()
		l.acked = append(l.acked, id)
		l.lastPort, l.lastAt = port, at
		if l.reported < l.gen && connGen == l.gen {
			l.reported = l.gen
			fmt.Printf("failover %d %s %d\n", at.UnixNano(), port, l.attempts)
		}
		l.mu.Unlock()
	}
	if conn != nil {
		conn.Close(context.Background())
	}
}

func (l *ledger) writeStatus(ctx context.Context, path string) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		l.mu.Lock()
		var last int64
		if !l.lastAt.IsZero() {
			last = l.lastAt.UnixNano()
		}
		line := fmt.Sprintf("%d %s %d %d\n", len(l.acked), orDash(l.lastPort), last, l.errors)
		l.mu.Unlock()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(line), 0o644); err == nil {
			os.Rename(tmp, path)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// verify reads the ledger back through the first endpoint that answers
// within a minute and reports what is missing.
func (l *ledger) verify() error {
	deadline := time.Now().Add(time.Minute)
	var have map[int64]bool
	var err error
	for i := 0; ; i++ {
		if have, err = l.read(l.ports[i%len(l.ports)]); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("read the ledger back: %w", err)
		}
		time.Sleep(retryPause)
	}
	missing, present := 0, 0
	for _, id := range l.acked {
		if !have[id] {
			missing++
		}
	}
	for _, id := range l.inDoubt {
		if have[id] {
			present++
		}
	}
	fmt.Printf("ledger acked=%d in_doubt=%d in_doubt_present=%d missing=%d\n", len(l.acked), len(l.inDoubt), present, missing)
	if missing > 0 {
		return fmt.Errorf("%d of %d acknowledged ids are missing", missing, len(l.acked))
	}
	return nil
}

func (l *ledger) read(port string) (map[int64]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := l.connect(ctx, port)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT id FROM ledger")
	if err != nil {
		return nil, err
	}
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(have) == 0 && len(l.acked) > 0 {
		return nil, errors.New("the ledger is empty")
	}
	return have, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cluster:", err)
	os.Exit(1)
}
