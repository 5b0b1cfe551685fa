"""A websocket app for the node-restart test: every websocket it accepts gets a text
frame with a rising number every 100 ms until it closes; a plain GET gets `ws-app`."""

import base64
import hashlib
import os
import socket
import threading
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handle(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            conn.close()
            return
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = {}
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("upgrade", "").lower() != "websocket":
        body = b"ws-app\n"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body
        )
        conn.close()
        return
    key = fields["sec-websocket-key"] + GUID
    accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
    conn.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
        ).encode()
    )
    n = 0
    try:
        while True:
            n += 1
            payload = str(n).encode()
            conn.sendall(bytes([0x81, len(payload)]) + payload)
            time.sleep(0.1)
    except OSError:
        pass
    conn.close()


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(os.environ["PORT"])))
    server.listen(128)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


main()
