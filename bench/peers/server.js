// The limiters users would pick instead of ThrottleX, each behind the same small Node.js HTTP
// server (bench/peers_report.sh):
//   node server.js PORT memory            rate-limiter-flexible, RateLimiterMemory (in process)
//   node server.js PORT redis HOST:PORT   rate-limiter-flexible, RateLimiterRedis (ioredis)
//   node server.js PORT lua HOST:PORT     a token bucket in a Redis Lua script (token_bucket.lua)
// GET /check?key=K → 200 {"allowed":true,"remaining":N}, 429 when the key is over its limit,
// 400 without a key, 503 {"error":...} when the store fails. Every key: LIMIT (env, default 100)
// per PERIOD_S seconds (default 60). GET /fill?key=K: the same with 100 per day, so that one check
// leaves state that lasts (the memory-per-key measurement).
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const { RateLimiterMemory, RateLimiterRedis } = require('rate-limiter-flexible');

const [port, mode, redisAddr] = process.argv.slice(2);
const limit = Number(process.env.LIMIT || 100);
const periodS = Number(process.env.PERIOD_S || 60);
if (!port || !['memory', 'redis', 'lua'].includes(mode) || (mode !== 'memory' && !redisAddr)) {
  console.error('usage: node server.js PORT memory|redis HOST:PORT|lua HOST:PORT');
  process.exit(2);
}

function redisClient() {
  const Redis = require('ioredis');
  const [host, p] = redisAddr.split(':');
  return new Redis({ host, port: Number(p), enableOfflineQueue: false, maxRetriesPerRequest: 1 });
}

// A check function (key -> Promise<{allowed, remaining}>) for `points` per `seconds`.
let makeCheck;
if (mode === 'lua') {
  const redis = redisClient();
  redis.defineCommand('tokenBucket', {
    numberOfKeys: 1,
    lua: fs.readFileSync(path.join(__dirname, 'token_bucket.lua'), 'utf8'),
  });
  makeCheck = (points, seconds, prefix) => {
    const perMs = points / (seconds * 1000);
    return (key) => redis.tokenBucket(prefix + key, points, perMs, 1)
      .then(([allowed, remaining]) => ({ allowed: allowed === 1, remaining }));
  };
} else {
  const store = mode === 'memory' ? null : redisClient();
  makeCheck = (points, seconds, prefix) => {
    const options = { points, duration: seconds, keyPrefix: prefix };
    const limiter = store ? new RateLimiterRedis({ ...options, storeClient: store })
      : new RateLimiterMemory(options);
    return (key) => limiter.consume(key, 1).then(
      (r) => ({ allowed: true, remaining: r.remainingPoints }),
      (r) => {
        if (r instanceof Error) throw r;
        return { allowed: false, remaining: 0 };
      });
  };
}
const routes = { '/check': makeCheck(limit, periodS, 'c:'), '/fill': makeCheck(100, 86400, 'f:') };

const server = http.createServer((req, res) => {
  const q = req.url.indexOf('?');
  const params = new URLSearchParams(q < 0 ? '' : req.url.slice(q + 1));
  const key = params.get('key');
  const check = routes[q < 0 ? req.url : req.url.slice(0, q)];
  if (!check || !key) {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end('{"error":"GET /check?key=K or /fill?key=K"}');
    return;
  }
  check(key).then((r) => {
    res.writeHead(r.allowed ? 200 : 429, { 'content-type': 'application/json' });
    res.end(`{"allowed":${r.allowed},"remaining":${r.remaining}}`);
  }, (e) => {
    res.writeHead(503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: String(e && e.message || e) }));
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1', () => console.error(`peer ${mode} listening on ${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
