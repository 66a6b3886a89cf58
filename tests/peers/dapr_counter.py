#!/usr/bin/env python3
"""The counter actor for Dapr, the peer `make bench-peers` compares aether with: the same logic as
aether's built-in `counter` kind (`{"add": n}` adds n, a read returns the value), written the way a
Dapr actor app is written (the actor HTTP contract of Dapr v1.14: /dapr/config, PUT
/actors/{type}/{id}/method/{method}, DELETE on deactivation, /healthz), its state kept by daprd in the
actor state store (Redis). Python standard library only.

    dapr_counter.py --port 7000 --dapr-port 3500
"""
import argparse
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIG = json.dumps({
    "entities": ["Counter"],
    "actorIdleTimeout": "1h",
    "drainOngoingCallTimeout": "10s",
    "drainRebalancedActors": True,
}).encode()


class Sidecar(threading.local):
    """One keep-alive connection to this pod's daprd per handler thread."""

    def __init__(self):
        self.conn = None

    def call(self, port, method, path, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


SIDECAR = Sidecar()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    dapr_port = 3500

    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/dapr/config":
            self.reply(200, CONFIG)
        else:
            self.reply(200 if self.path == "/healthz" else 404)

    def do_DELETE(self):
        # Deactivation: nothing held here, the state is daprd's.
        self.reply(200)

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("/")
        # /actors/Counter/{id}/method/{method}
        if len(parts) != 6 or parts[1] != "actors" or parts[4] != "method":
            self.reply(404)
            return
        actor, method = parts[3], parts[5]
        state = f"/v1.0/actors/Counter/{actor}/state"
        status, raw = SIDECAR.call(self.dapr_port, "GET", f"{state}/value")
        if status not in (200, 204):
            self.reply(500, raw)
            return
        value = json.loads(raw) if status == 200 and raw else 0
        if method == "add":
            n = json.loads(body or b"{}").get("add", 0)
            value += n
            ops = json.dumps([{"operation": "upsert", "request": {"key": "value", "value": value}}])
            status, raw = SIDECAR.call(self.dapr_port, "POST", state, ops.encode())
            if status not in (200, 204):
                self.reply(500, raw)
                return
        elif method != "read":
            self.reply(404)
            return
        self.reply(200, json.dumps({"value": value}).encode())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dapr-port", type=int, required=True)
    a = p.parse_args()
    Handler.dapr_port = a.dapr_port
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
