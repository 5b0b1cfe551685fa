// A Node.js app that keeps its state in PostgreSQL: every request is stored
// as a visit and answered with the number of visits so far.
//
// It runs on the nodejs cartridge (which sets $PORT) and finds its database
// in $DATABASE_URL, which a link to a postgresql gear provides:
//
//   gear create db --cartridge postgresql && gear start db
//   gear create counter --cartridge nodejs
//   gear link counter db
//   gear deploy counter examples/node-postgres
"use strict";

const http = require("node:http");
const { Pool } = require("pg");

const port = Number(process.env.PORT || process.env.GEAR_PORT || 8080);
const gear = process.env.GEAR_NAME || "this gear";

if (!process.env.DATABASE_URL) {
  console.error(
    "DATABASE_URL is not set: link this gear to a PostgreSQL gear " +
      "(`gear link APP DB`), then restart it"
  );
}

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
pool.on("error", (err) => console.error(`idle database connection failed: ${err.message}`));

// the table is created on first use, and again after a failure (the
// database may start after the app)
let schema = null;
function ensureSchema() {
  if (!schema) {
    schema = pool
      .query(
        `CREATE TABLE IF NOT EXISTS visits (
           id   bigserial PRIMARY KEY,
           at   timestamptz NOT NULL DEFAULT now(),
           path text NOT NULL
         )`
      )
      .catch((err) => {
        schema = null;
        throw err;
      });
  }
  return schema;
}

async function visit(path) {
  await ensureSchema();
  await pool.query("INSERT INTO visits (path) VALUES ($1)", [path]);
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM visits");
  return rows[0].n;
}

function reply(res, status, text) {
  res.writeHead(status, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    reply(res, 200, "ok\n");
    return;
  }
  if (req.url === "/favicon.ico") {
    reply(res, 404, "no icon\n");
    return;
  }
  visit(req.url).then(
    (n) => reply(res, 200, `visits: ${n}\nHello from ${gear}, counting in PostgreSQL.\n`),
    (err) => {
      console.error(`database request failed: ${err.message}`);
      reply(
        res,
        503,
        `database unavailable: ${err.message}\n` +
          "is this gear linked to a running postgresql gear (`gear show`)?\n"
      );
    }
  );
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${port}`);
});

// finish requests in flight, then close the database connections
process.on("SIGTERM", () => {
  server.close(() => pool.end().finally(() => process.exit(0)));
});
