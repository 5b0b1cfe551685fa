"""A Python app with no dependencies: the standard library's HTTP server.

The python cartridge runs app.py with the gear's virtualenv and tells it the
port to listen on in $PORT.
"""

import json
import os
import platform
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body, kind = b"ok\n", "text/plain"
        elif self.path == "/info":
            info = {
                "gear": os.environ.get("GEAR_NAME"),
                "namespace": os.environ.get("GEAR_NAMESPACE"),
                "python": platform.python_version(),
            }
            body, kind = json.dumps(info).encode() + b"\n", "application/json"
        else:
            name = os.environ.get("GEAR_NAME", "a gear")
            body = f"Hello from Python in {name}!\n".encode()
            kind = "text/plain; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Hello)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
