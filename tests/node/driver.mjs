// Neon's serverless driver, unmodified, against a neonfs endpoint
// (run by tests/serverless_test.go). Everything comes from the
// environment, never argv: DATABASE_URL (postgres://postgres:PW@HOST:PORT/postgres)
// and NEONFS_HTTP (host:port of the endpoint's HTTP listener).
// Prints one JSON line of results; exits non-zero on any failure.
import { neon, neonConfig, Pool } from '@neondatabase/serverless';
import ws from 'ws';

const url = process.env.DATABASE_URL;
const httpAddr = process.env.NEONFS_HTTP;
if (!url || !httpAddr) {
  console.error('driver.mjs: DATABASE_URL and NEONFS_HTTP must be set');
  process.exit(2);
}

// Plain ws:// and http:// on loopback: the endpoint speaks no TLS.
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => `${httpAddr}/v2`;
neonConfig.useSecureWebSocket = false;
neonConfig.forceDisablePgSSL = true;
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = 'password';
neonConfig.fetchEndpoint = () => `http://${httpAddr}/sql`;

const out = {};
const t0 = Date.now();

// WebSocket: a Pool query (the endpoint is suspended: this wakes it).
const pool = new Pool({ connectionString: url });
const r1 = await pool.query('SELECT 41 + $1::int AS answer', [1]);
out.poolAnswer = r1.rows[0].answer;
out.firstRowMs = Date.now() - t0;

// WebSocket: a transaction of 50 inserts on one client.
const client = await pool.connect();
try {
  await client.query('CREATE TABLE IF NOT EXISTS driver_t (id int PRIMARY KEY, note text)');
  await client.query('BEGIN');
  for (let i = 1; i <= 50; i++) {
    await client.query('INSERT INTO driver_t VALUES ($1, $2)', [i, `row ${i}`]);
  }
  await client.query('COMMIT');
  const c = await client.query('SELECT count(*)::int AS n FROM driver_t');
  out.wsCount = c.rows[0].n;
} finally {
  client.release();
}
await pool.end();

// SQL over HTTP: a query with parameters, and a transaction.
const sql = neon(url);
const rows = await sql`SELECT ${7}::int AS seven, ${'x'}::text AS x, ${null}::text AS nothing, count(*)::int AS n FROM driver_t`;
out.httpRow = rows[0];
const [a, b] = await sql.transaction([
  sql`INSERT INTO driver_t VALUES (51, 'via http') RETURNING id`,
  sql`SELECT count(*)::int AS n FROM driver_t`,
], { isolationLevel: 'Serializable' });
out.httpTxInsert = a[0].id;
out.httpTxCount = b[0].n;

// A wrong password is Postgres's own error over both paths.
const bad = new URL(url);
bad.password = 'wrong-password';
try {
  await neon(bad.toString())`SELECT 1`;
  out.httpBadPassword = 'accepted';
} catch (e) {
  out.httpBadPassword = e.code ?? String(e);
}
const badPool = new Pool({ connectionString: bad.toString() });
try {
  await badPool.query('SELECT 1');
  out.wsBadPassword = 'accepted';
} catch (e) {
  out.wsBadPassword = e.code ?? String(e);
}
await badPool.end().catch(() => {});

console.log(JSON.stringify(out));
