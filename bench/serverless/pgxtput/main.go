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
	"net/http"
	"strings"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	clients, _ := strconv.Atoi(os.Getenv("CLIENTS"))
	seconds, _ := strconv.Atoi(os.Getenv("TPUT_SECONDS"))
	if clients <= 0 || seconds <= 0 {
		fmt.Fprintln(os.Stderr, "pgxtput: set CLIENTS and TPUT_SECONDS")
		os.Exit(2)
	}
	ctx := context.Background()
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	if os.Getenv("MODE") == "http" {
		n, err := httpLoop(clients, end)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pgxtput:", err)
			os.Exit(1)
		}
		fmt.Println(n / int64(seconds))
		return
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			for time.Now().Before(end) {
				var bal int
				if err := conn.QueryRow(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1+rand.IntN(100000)).Scan(&bal); err != nil {
					errs <- err
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fmt.Fprintln(os.Stderr, "pgxtput:", err)
		os.Exit(1)
	}
	fmt.Println(n.Load() / int64(seconds))
}

// httpLoop runs the point query as SQL over HTTP from clients goroutines.
func httpLoop(clients int, end time.Time) (int64, error) {
	url := "http://" + os.Getenv("NEONFS_HTTP") + "/sql"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				body := fmt.Sprintf(`{"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":["%d"]}`, 1+rand.IntN(100000))
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("Neon-Connection-String", os.Getenv("DATABASE_URL"))
				req.Header.Set("Neon-Raw-Text-Output", "true")
				req.Header.Set("Neon-Array-Mode", "true")
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("HTTP %s", resp.Status)
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
