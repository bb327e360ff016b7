// The Express yardstick for cold starts (bench/cold_start.py), as a stripe-samples server is
// written: Express, the Stripe Node SDK pointed at STRIPE_API_BASE, and one create per request.
"use strict";
const express = require("express");
const Stripe = require("stripe");

const api = new URL(process.env.STRIPE_API_BASE);
const stripe = new Stripe(process.env.STRIPE_SECRET_KEY, {
  host: api.hostname,
  port: Number(api.port),
  protocol: api.protocol.replace(":", ""),
  maxNetworkRetries: 2,
});

const app = express();
app.use(express.json());
app.post("/api/checkout/embedded-session", async (request, response) => {
  try {
    const session = await stripe.checkout.sessions.create({
      ui_mode: "embedded_page",
      mode: "payment",
      line_items: [
        { price_data: { currency: "usd", unit_amount: 200, product_data: { name: "Bench" } }, quantity: 1 },
      ],
      return_url: "http://localhost:5173/done",
      redirect_on_completion: "if_required",
    });
    response.json({ client_secret: session.client_secret, session_id: session.id });
  } catch (error) {
    response.status(502).json({ error: error.message });
  }
});
app.listen(Number(process.argv[2]), "127.0.0.1");
