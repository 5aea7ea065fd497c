// payments (Node.js, no dependencies): charges each order.created.v1 it is delivered and
// publishes order.paid.v1 in structured mode (the whole event as one JSON document).
"use strict";
const http = require("node:http");
const crypto = require("node:crypto");

const HERALD_URL = process.env.HERALD_URL || "http://127.0.0.1:8250";
const PORT = Number(process.env.PORT || 8080);

async function publishPaid(order, amount) {
  const event = {
    specversion: "1.0",
    id: crypto.randomUUID(),
    source: "payments",
    type: "order.paid.v1",
    datacontenttype: "application/json",
    data: { order, amount, payment: `pay-${order}` },
  };
  const res = await fetch(`${HERALD_URL}/publish`, {
    method: "POST",
    headers: { "content-type": "application/cloudevents+json" },
    body: JSON.stringify(event),
  });
  if (res.status !== 204) throw new Error(`publish answered ${res.status}: ${await res.text()}`);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    try {
      // Binary mode delivery: attributes in ce-* headers, the data is the body.
      const order = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      await publishPaid(order.order, order.total);
      console.log(`payments: order ${order.order} paid (${order.total} ${order.currency})`);
      res.writeHead(204).end();
    } catch (e) {
      // A 503 is retried by the sidecar with backoff, then dead-lettered.
      console.error(`payments: ${e.message}`);
      res.writeHead(503).end();
    }
  });
});

server.listen(PORT, "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
