// Command pgxtput is bench/serverless.sh's TCP baseline: CLIENTS pgx
// connections running the same point query as tput.mjs for TPUT_SECONDS;
// prints queries per second. DATABASE_URL comes from the environment.
package main

import (
	"context"
	"fmt"
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
