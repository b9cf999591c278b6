#!/usr/bin/env python3
"""A webhook receiver for .ci/interop.sh: records every POST, verifies its
Standard Webhooks signature with the `standardwebhooks` package (an
implementation independent of the broker's), and answers 200 `ok`.

    webhook_receiver.py PORT_FILE SECRET_FILE LOG_FILE [CERT_FILE KEY_FILE]

- Listens on 127.0.0.1:0 (HTTP/1.1, keep-alive, one thread per connection;
  HTTPS when CERT_FILE and KEY_FILE are given) and writes the port to
  PORT_FILE once it accepts connections.
- SECRET_FILE holds the endpoint's `whsec_...` secret. It is read for every
  request, because the secret is known only after CreateEndpoint; while the
  file is missing or empty, requests are logged with `verified: false`.
- Each POST appends one JSON line to LOG_FILE:
  {"method", "path", "headers": {lowercased name: value}, "header_list":
  [[name, value], ...] (as received, repeats kept), "body": text,
  "verified": bool, "verify_error": str or null, "received_at": unix time}.
  A header sent more than once appears joined with ", " in `headers`.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

MAX_BODY = 16 * 1024 * 1024


def read_secret(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def verify(secret, body, headers):
    """(verified, error): the standardwebhooks package's verdict."""
    if not secret:
        return False, "no secret yet (the secret file is missing or empty)"
    try:
        Webhook(secret).verify(body, headers)
        return True, None
    except Exception as e:  # noqa: BLE001 - any failure is "not verified"
        return False, f"{type(e).__name__}: {e}"


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that clients keep connections alive; every response sets
    # Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "stevedore-interop-receiver"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the JSON log is the record; keep stderr quiet

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the chunk's CRLF
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"body of {length} bytes")
        return self.rfile.read(length)

    def reply(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - http.server's naming
        received_at = time.time()
        raw = self.read_body()
        header_list = [[k.lower(), v] for k, v in self.headers.items()]
        headers = {}
        for k, v in header_list:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body = raw.decode("utf-8", errors="replace")
        verified, error = verify(read_secret(self.server.secret_file), body, headers)
        record = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "header_list": header_list,
            "body": body,
            "body_is_utf8": body.encode("utf-8") == raw,
            "verified": verified,
            "verify_error": error,
            "received_at": received_at,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.server.log_lock:
            with open(self.server.log_file, "a", encoding="utf-8") as f:
                f.write(line)
        self.reply(200, "ok")

    def do_GET(self):  # noqa: N802
        self.reply(405, "POST only")

    do_PUT = do_DELETE = do_PATCH = do_GET


def main():
    if len(sys.argv) not in (4, 6):
        sys.exit(f"usage: {sys.argv[0]} PORT_FILE SECRET_FILE LOG_FILE [CERT_FILE KEY_FILE]")
    port_file, secret_file, log_file = sys.argv[1:4]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if len(sys.argv) == 6:
        # HTTPS with the given certificate chain and key.
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    server.secret_file = secret_file
    server.log_file = log_file
    server.log_lock = threading.Lock()
    open(log_file, "a").close()
    # Written atomically: the shell polls for a complete port number.
    tmp = f"{port_file}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(tmp, port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
