// Command coldstart is bench/coldstart.sh's client: it times connect to the
// first row of `SELECT 1` (simple protocol, as psql sends it) from inside
// one process, so the figure carries neither a shell's nor a client
// binary's own start-up. The connection string comes from the environment
// (COLDSTART_URL), never from argv: it holds the password.
//
//	COLDSTART_URL=postgres://... coldstart [-n N] [-retry 30s] [-poll 1ms]
//		[-pidfile PATH] [-as USER] [-bg -log FILE] [-- CMD ARGS...]
//
// With a command, each of the N rounds runs it first (it must exit 0) and
// the time counts from just before it starts: `-- pg_ctl start -w ...` is
// a native start plus the first row. -as runs it as USER (uid and gid, no
// PAM session, as neonfs starts Postgres); -bg starts it in its own
// process group and does not wait for it (`-bg -as postgres -- postgres
// -D ...`: a postmaster, left running), its output going to -log. The
// command never sees COLDSTART_URL. -retry keeps reconnecting (every
// -poll) while the server refuses or is still starting, for a command that
// returns before the server is ready. -pidfile waits (polling every -poll)
// until the named postmaster.pid says the server is ready (as pg_ctl -w
// does, but pg_ctl looks every 100 ms) before the first connection
// attempt, so no attempt forks a backend that is turned away while the
// server starts. One line per round on stdout:
//
//	total_ms cmd_ms connect_ms attempts
//
// where connect_ms is from the successful attempt's dial to its first row.
// TLS is never tried (the endpoint listener and the bench servers speak
// plain TCP; pgx's sslmode=prefer would dial twice).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	n := flag.Int("n", 1, "rounds")
	retry := flag.Duration("retry", 0, "keep retrying a failed connection this long")
	poll := flag.Duration("poll", time.Millisecond, "pause between retries")
	pidfile := flag.String("pidfile", "", "wait until this postmaster.pid says ready before connecting")
	as := flag.String("as", "", "run the command as this user")
	bg := flag.Bool("bg", false, "start the command and do not wait for it")
	logPath := flag.String("log", "", "with -bg: append the command's output here")
	flag.Parse()
	url := os.Getenv("COLDSTART_URL")
	if url == "" {
		fail(errors.New("COLDSTART_URL is not set"))
	}
	os.Unsetenv("COLDSTART_URL")
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		fail(fmt.Errorf("COLDSTART_URL: %w", err))
	}
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = 5 * time.Minute
	for range *n {
		t0 := time.Now()
		var cmdTook time.Duration
		if args := flag.Args(); len(args) > 0 {
			if err := run(args, *as, *bg, *logPath); err != nil {
				fail(fmt.Errorf("%v: %w", args, err))
			}
			cmdTook = time.Since(t0)
		}
		deadline := time.Now().Add(*retry)
		if *pidfile != "" {
			for !ready(*pidfile) {
				if time.Now().After(deadline) {
					fail(fmt.Errorf("%s: not ready after %v", *pidfile, *retry))
				}
				time.Sleep(*poll)
			}
		}
		attempts := 0
		for {
			attempts++
			t1 := time.Now()
			end, err := firstRow(cfg)
			if err == nil {
				fmt.Printf("%.3f %.3f %.3f %d\n", ms(end.Sub(t0)), ms(cmdTook), ms(end.Sub(t1)), attempts)
				break
			}
			if time.Now().After(deadline) {
				fail(err)
			}
			time.Sleep(*poll)
		}
	}
}

// run runs args (as user when set), or only starts them with bg.
func run(args []string, as string, bg bool, logPath string) error {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if as != "" {
		u, err := user.Lookup(as)
		if err != nil {
			return err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	}
	if !bg {
		return cmd.Run()
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.Stdout, cmd.Stderr = nil, nil
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// firstRow connects, runs SELECT 1 and returns when its row arrived
// (before the connection is closed).
func firstRow(cfg *pgx.ConnConfig) (time.Time, error) {
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol).Scan(&one); err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	if one != 1 {
		return at, fmt.Errorf("SELECT 1 returned %d", one)
	}
	return at, nil
}

// ready reports whether a postmaster.pid's status line (the 8th) says
// ready: the postmaster accepts connections.
func ready(pidfile string) bool {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[7]) == "ready"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "coldstart:", err)
	os.Exit(1)
}
