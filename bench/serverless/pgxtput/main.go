// Command pgxtput is bench/serverless.sh's Go client: CLIENTS loops
// running the same point query as tput.mjs for TPUT_SECONDS, over pgx
// connections (MODE=tcp, the baseline) or as SQL-over-HTTP requests with
// Go's HTTP client (MODE=http: the endpoint's cost without Node's);
// prints queries per second. DATABASE_URL and NEONFS_HTTP come from the
// environment.
package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

const query = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"

func main() {
	clients, _ := strconv.Atoi(os.Getenv("CLIENTS"))
	seconds, _ := strconv.Atoi(os.Getenv("TPUT_SECONDS"))
	if clients <= 0 || seconds <= 0 {
		fmt.Fprintln(os.Stderr, "pgxtput: set CLIENTS and TPUT_SECONDS")
		os.Exit(2)
	}
	client := tcpClient
	if os.Getenv("MODE") == "http" {
		client = httpClient(clients)
	}
	n, err := loop(clients, time.Now().Add(time.Duration(seconds)*time.Second), client)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgxtput:", err)
		os.Exit(1)
	}
	fmt.Println(n / int64(seconds))
}

// A client returns the query to run once per iteration, and a cleanup.
type client func() (query func() error, done func(), err error)

// loop runs one client per goroutine until end; it counts the queries.
func loop(clients int, end time.Time, newClient client) (int64, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q, done, err := newClient()
			if err != nil {
				errs <- err
				return
			}
			defer done()
			for time.Now().Before(end) {
				if err := q(); err != nil {
					errs <- err
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return n.Load(), <-errs
}

func tcpClient() (func() error, func(), error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return nil, nil, err
	}
	return func() error {
		var bal int
		return conn.QueryRow(ctx, query, 1+rand.IntN(100000)).Scan(&bal)
	}, func() { conn.Close(ctx) }, nil
}

func httpClient(clients int) client {
	url := "http://" + os.Getenv("NEONFS_HTTP") + "/sql"
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	return func() (func() error, func(), error) {
		return func() error {
			body := fmt.Sprintf(`{"query":%q,"params":["%d"]}`, query, 1+rand.IntN(100000))
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
			req.Header.Set("Neon-Connection-String", os.Getenv("DATABASE_URL"))
			req.Header.Set("Neon-Raw-Text-Output", "true")
			req.Header.Set("Neon-Array-Mode", "true")
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("HTTP %s", resp.Status)
			}
			return nil
		}, func() {}, nil
	}
}
