"""A herald example app, standard library only.

On start it publishes one event through its sidecar (HERALD_URL, which herald sets), then serves
deliveries on PORT: CloudEvents in binary mode (ce-* headers) or structured mode (one JSON
document), answering 204 so herald acknowledges them.
"""

import json
import os
import signal
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERALD_URL = os.environ.get("HERALD_URL", "http://127.0.0.1:8250")
PORT = int(os.environ.get("PORT", "8080"))


class Deliveries(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-type", "").startswith("application/cloudevents+json"):
            event = json.loads(body)
            data = event.pop("data", event.pop("data_base64", None))
            attrs = event
        else:
            attrs = {k.lower()[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
            data = body.decode("utf-8", errors="replace")
        # One write per line: deliveries may arrive concurrently (one thread each), and print()
        # writes the text and its newline separately, so two lines could run together.
        sys.stdout.write(
            f"received {attrs.get('type')} id={attrs.get('id')} source={attrs.get('source')}"
            f" attempt={self.headers.get('herald-delivery-attempt')}: {data}\n"
        )
        sys.stdout.flush()
        # Any 2xx acknowledges; 5xx, 404, 408, 409 and 429 are retried; other 4xx dead-letter.
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def publish(event_type, data):
    """POST the data to /events/{type}: herald fills id, source, time and specversion."""
    req = urllib.request.Request(
        f"{HERALD_URL}/events/{event_type}",
        data=json.dumps(data).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Deliveries)
    print(f"listening for deliveries on port {PORT}", flush=True)
    status = publish("order.created.v1", {"order": 42, "from": "the example app"})
    print(f"published order.created.v1 through {HERALD_URL}: HTTP {status}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
