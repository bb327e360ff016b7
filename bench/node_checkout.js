// The Node yardstick for cold starts (bench/cold_start.py): what a minimal Express checkout
// sample does per create, on Node's own http module (Express is not installed here, and its
// require would only add to Node's time): read the body, make one form POST to Stripe's
// /v1/checkout/sessions, and answer {client_secret, session_id}.
"use strict";
const http = require("node:http");

const api = new URL(process.env.STRIPE_API_BASE);
const key = process.env.STRIPE_SECRET_KEY;
const form = process.env.CREATE_FORM;

function create(response) {
  const call = http.request(
    {
      host: api.hostname,
      port: api.port,
      path: "/v1/checkout/sessions",
      method: "POST",
      headers: {
        Authorization: `Bearer ${key}`,
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": Buffer.byteLength(form),
      },
    },
    (answer) => {
      let body = "";
      answer.setEncoding("utf8");
      answer.on("data", (chunk) => (body += chunk));
      answer.on("end", () => {
        const session = JSON.parse(body);
        response.writeHead(answer.statusCode === 200 ? 200 : 502, {
          "Content-Type": "application/json",
        });
        response.end(JSON.stringify({ client_secret: session.client_secret, session_id: session.id }));
      });
    },
  );
  call.on("error", () => {
    response.writeHead(502);
    response.end();
  });
  call.end(form);
}

http
  .createServer((request, response) => {
    if (request.method !== "POST" || request.url !== "/api/checkout/embedded-session") {
      response.writeHead(404);
      response.end();
      return;
    }
    request.resume();
    request.on("end", () => create(response));
  })
  .listen(Number(process.argv[2]), "127.0.0.1");
