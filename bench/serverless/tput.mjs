// bench/serverless.sh's throughput client: CLIENTS concurrent loops of
// neon() queries (SQL over HTTP) for TPUT_SECONDS; prints queries per second.
import { neon, neonConfig } from '@neondatabase/serverless';

const url = process.env.DATABASE_URL, httpAddr = process.env.NEONFS_HTTP;
const clients = Number(process.env.CLIENTS ?? 8), seconds = Number(process.env.TPUT_SECONDS ?? 10);
neonConfig.fetchEndpoint = () => `http://${httpAddr}/sql`;
const sql = neon(url);
const end = Date.now() + seconds * 1000;
let n = 0;
await Promise.all(Array.from({ length: clients }, async () => {
  while (Date.now() < end) {
    const r = await sql`SELECT abalance FROM pgbench_accounts WHERE aid = ${1 + Math.floor(Math.random() * 100000)}`;
    if (r.length !== 1) throw new Error('no row');
    n++;
  }
}));
console.log((n / seconds).toFixed(0));
