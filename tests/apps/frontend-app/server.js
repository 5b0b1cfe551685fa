// The frontend's test app (nodejs cartridge, standard library only):
//   GET  /                 "hello from <gear>"
//   GET  /headers          the request's headers as JSON
//   POST /upload           reads the body as it streams; answers its size and SHA-256
//   GET  /download?bytes=N N bytes of a fixed pattern, streamed in chunks (no length)
//   GET  /slow?ms=N        answers after N ms
//   GET  /pid              the server's pid
//   GET  /hangup           closes the connection without answering
//   GET  /arm              answers, then closes its connection at the next request
//                          on it without answering (a keep-alive close racing a request)
//   GET  /ws               websocket: every text or binary message is echoed back
const http = require("http");
const crypto = require("crypto");

const port = Number(process.env.PORT || 8080);
const name = process.env.GEAR_NAME || "app";

function pattern(n) {
  const chunk = Buffer.alloc(n);
  for (let i = 0; i < n; i++) chunk[i] = i % 251;
  return chunk;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (req.socket.armed) {
    req.socket.destroy();
    return;
  }
  if (req.method === "GET" && url.pathname === "/") {
    res.setHeader("Content-Type", "text/plain");
    res.end(`hello from ${name}\n`);
  } else if (url.pathname === "/headers") {
    res.setHeader("Content-Type", "application/json");
    res.end(JSON.stringify({ url: req.url, method: req.method, headers: req.headers }));
  } else if (req.method === "POST" && url.pathname === "/upload") {
    const hash = crypto.createHash("sha256");
    let bytes = 0;
    req.on("data", (d) => {
      bytes += d.length;
      hash.update(d);
    });
    req.on("end", () => {
      res.setHeader("Content-Type", "application/json");
      res.end(JSON.stringify({ bytes, sha256: hash.digest("hex") }));
    });
  } else if (url.pathname === "/download") {
    let left = Number(url.searchParams.get("bytes") || 0);
    const block = pattern(251 * 256);
    res.setHeader("Content-Type", "application/octet-stream");
    const write = () => {
      while (left > 0) {
        const n = Math.min(left, block.length);
        left -= n;
        if (!res.write(block.subarray(0, n))) {
          res.once("drain", write);
          return;
        }
      }
      res.end();
    };
    write();
  } else if (url.pathname === "/slow") {
    setTimeout(() => res.end("slow\n"), Number(url.searchParams.get("ms") || 0));
  } else if (url.pathname === "/hangup") {
    req.socket.destroy();
  } else if (url.pathname === "/arm") {
    res.end("armed\n", () => {
      req.socket.armed = true;
    });
  } else if (url.pathname === "/pid") {
    res.end(`${process.pid}\n`);
  } else {
    res.statusCode = 404;
    res.end("not here\n");
  }
});

// a minimal RFC 6455 echo: handshake, then unmask and echo each frame
server.on("upgrade", (req, socket) => {
  const key = req.headers["sec-websocket-key"];
  if (!key || (req.headers.upgrade || "").toLowerCase() !== "websocket") {
    socket.end("HTTP/1.1 400 Bad Request\r\n\r\n");
    return;
  }
  const accept = crypto
    .createHash("sha1")
    .update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
  );
  let buf = Buffer.alloc(0);
  socket.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 0x0f;
      const masked = (buf[1] & 0x80) !== 0;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      const maskOff = off;
      if (masked) off += 4;
      if (buf.length < off + len) return;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[maskOff + (i % 4)];
      buf = buf.subarray(off + len);
      if (opcode === 8) {
        socket.end(Buffer.from([0x88, 0]));
        return;
      }
      let head;
      if (len < 126) head = Buffer.from([0x80 | opcode, len]);
      else if (len < 65536) {
        head = Buffer.alloc(4);
        head[0] = 0x80 | opcode;
        head[1] = 126;
        head.writeUInt16BE(len, 2);
      } else {
        head = Buffer.alloc(10);
        head[0] = 0x80 | opcode;
        head[1] = 127;
        head.writeBigUInt64BE(BigInt(len), 2);
      }
      socket.write(Buffer.concat([head, payload]));
    }
  });
});

server.keepAliveTimeout = 65000;
server.listen(port, "127.0.0.1", () => console.log(`frontend test app on ${port}`));
