"""orders (Python, standard library only): the start of the orders -> payments -> shipping flow.

Publishes COUNT `order.created.v1` events through its sidecar (HERALD_URL) in binary mode, then
serves deliveries of `order.shipped.v1` on PORT and prints each order as it completes.
"""

import json
import os
import signal
import sys
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERALD_URL = os.environ.get("HERALD_URL", "http://127.0.0.1:8250")
PORT = int(os.environ.get("PORT", "8080"))
COUNT = int(os.environ.get("COUNT", "3"))


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Deliveries(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        event_type = self.headers.get("ce-type")
        if event_type == "order.shipped.v1":
            shipment = json.loads(body)
            # One write per line: deliveries arrive concurrently (one thread each), and print()
            # writes the text and its newline separately, so two lines could run together.
            say(f"orders: order {shipment['order']} shipped ({shipment['carrier']} {shipment['tracking']})")
        # 2xx acknowledges; 5xx, 404, 408, 409 and 429 are retried; other 4xx dead-letter.
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def publish(order, total):
    """Binary mode: the attributes in ce-* headers, the body is the data."""
    req = urllib.request.Request(
        f"{HERALD_URL}/publish",
        data=json.dumps({"order": order, "total": total, "currency": "EUR"}).encode(),
        headers={
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-source": "orders",
            "ce-type": "order.created.v1",
            "content-type": "application/json",
        },
        method="POST",
    )
    # herald answers 204 once JetStream has stored the event.
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Deliveries)
    for order in range(1, COUNT + 1):
        status = publish(order, round(9.5 * order, 2))
        print(f"orders: order {order} created (HTTP {status})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
