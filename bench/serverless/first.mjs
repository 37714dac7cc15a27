// bench/serverless.sh's driver client: connect to the first row of
// `SELECT 1` with Neon's serverless driver, ROUNDS times, one line of
// milliseconds each (timed inside the process: Node's own start-up is not
// counted). MODE=ws (Pool over the WebSocket, a new pool per round) or
// http (neon() over SQL over HTTP). DATABASE_URL and NEONFS_HTTP come from
// the environment, never argv.
import { neon, neonConfig, Pool } from '@neondatabase/serverless';
import ws from 'ws';

const url = process.env.DATABASE_URL, httpAddr = process.env.NEONFS_HTTP;
const mode = process.env.MODE ?? 'ws', rounds = Number(process.env.ROUNDS ?? 1);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => `${httpAddr}/v2`;
neonConfig.useSecureWebSocket = false;
neonConfig.forceDisablePgSSL = true;
neonConfig.pipelineTLS = false;
neonConfig.fetchEndpoint = () => `http://${httpAddr}/sql`;

for (let i = 0; i < rounds; i++) {
  const t0 = process.hrtime.bigint();
  if (mode === 'http') {
    const rows = await neon(url)`SELECT 1 AS one`;
    if (rows[0].one !== 1) throw new Error(`got ${JSON.stringify(rows)}`);
  } else {
    const pool = new Pool({ connectionString: url, max: 1 });
    const r = await pool.query('SELECT 1 AS one');
    if (r.rows[0].one !== 1) throw new Error(`got ${JSON.stringify(r.rows)}`);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    await pool.end();
    console.log(ms.toFixed(1));
    continue;
  }
  console.log((Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1));
}
