// A Node.js app with no dependencies. The nodejs cartridge runs `npm start`
// and tells it the port to listen on in $PORT.
"use strict";

const http = require("node:http");

const port = Number(process.env.PORT || 8080);
const name = process.env.GEAR_NAME || "a gear";

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("ok\n");
    return;
  }
  if (req.url === "/info") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ gear: name, node: process.version }) + "\n");
    return;
  }
  res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(`Hello from Node.js ${process.version} in ${name}!\n`);
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${port}`);
});

// finish requests in flight when the gear stops
process.on("SIGTERM", () => server.close(() => process.exit(0)));
