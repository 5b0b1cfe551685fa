"""A WSGI application, served in the gear by gunicorn (from requirements.txt).

The python cartridge looks for `application` in wsgi.py.
"""

import os


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body = b"ok\n"
    elif path == "/echo" and environ.get("REQUEST_METHOD") == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    else:
        server = environ.get("SERVER_SOFTWARE", "a WSGI server")
        name = os.environ.get("GEAR_NAME", "a gear")
        body = f"Hello from WSGI in {name}, served by {server}!\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
