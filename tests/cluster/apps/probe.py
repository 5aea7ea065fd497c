"""The cluster suite's app (tests/tests/cluster.rs), standard library only. Every record goes to
the test's HTTP sink on the host (SINK, e.g. http://10.244.0.1:PORT) so that it outlives the pod.

MODE selects what it does:
  relay      serves deliveries on PORT and records each (POST SINK/delivered); answers 204 only
             once the sink has it, so a delivery the sink missed is retried (at least once holds).
  publisher  publishes TYPE events PREFIX-1, PREFIX-2, ... at RATE per second until SIGTERM and
             records each acknowledged one (POST SINK/acked).
  farewell   serves PORT (so it holds a socket like any app); on SIGTERM it publishes one TYPE
             event from its shutdown handler and records the answer (POST SINK/farewell).
  once       publishes one TYPE event, records it as acknowledged, exits 0 (a Job).
  echo       relay, subscribed to TYPE, that publishes one TYPE event once its sidecar is ready
             (its consumer bound: the events stream keeps an event only for existing consumers).
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERALD_URL = os.environ.get("HERALD_URL", "http://127.0.0.1:8250")
SINK = os.environ["SINK"]
MODE = os.environ["MODE"]
PORT = int(os.environ.get("PORT", "8080"))
TYPE = os.environ.get("TYPE", "probe.v1")
POD = os.environ.get("POD_NAME", "pod")


def post(url, body, headers=None, timeout=5):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def record(kind, **fields):
    fields.update(pod=POD, at=time.time())
    return post(f"{SINK}/{kind}", json.dumps(fields).encode(), {"content-type": "application/json"})


def publish(event_id):
    return post(
        f"{HERALD_URL}/publish",
        json.dumps({"id": event_id, "pod": POD}).encode(),
        {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "cluster-suite",
            "ce-type": TYPE,
            "content-type": "application/json",
        },
    )


class Relay(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        status = record(
            "delivered",
            id=self.headers.get("ce-id"),
            type=self.headers.get("ce-type"),
            attempt=self.headers.get("herald-delivery-attempt"),
        )
        self.send_response(204 if 200 <= status < 300 else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve():
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if MODE == "relay":
        serve()
        stop.wait()
    elif MODE == "publisher":
        rate = float(os.environ.get("RATE", "20"))
        prefix = os.environ.get("PREFIX", POD)
        n = 0
        while not stop.is_set():
            n += 1
            event_id = f"{prefix}-{n}"
            status = publish(event_id)
            while status != 204 and not stop.is_set():
                time.sleep(0.05)
                status = publish(event_id)
            if status == 204:
                record("acked", id=event_id)
            stop.wait(1 / rate)
    elif MODE == "farewell":
        serve()
        stop.wait()
        # The sidecar got its SIGTERM at the same moment (Kubernetes 1.28): give it time to
        # begin its own shutdown, as a real app's shutdown work would.
        time.sleep(1)
        event_id = f"farewell-{POD}"
        record("farewell", id=event_id, status=publish(event_id))
    elif MODE == "once":
        event_id = f"{TYPE}-{POD}"
        status = publish(event_id)
        while status != 204:
            time.sleep(0.1)
            status = publish(event_id)
        record("acked", id=event_id)
    elif MODE == "echo":
        serve()
        while not stop.is_set():
            try:
                with urllib.request.urlopen("http://127.0.0.1:9250/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.02)
        event_id = f"echo-{POD}"
        while publish(event_id) != 204 and not stop.is_set():
            time.sleep(0.02)
        stop.wait()
    else:
        sys.exit(f"unknown MODE {MODE}")


if __name__ == "__main__":
    main()
