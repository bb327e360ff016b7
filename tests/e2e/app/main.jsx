// The page the end-to-end tests open: the README's component (Checkout.jsx, copied from the README
// by the test) inside <StrictMode>, as a React app renders it in development.
import { StrictMode, useCallback, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { Checkout, CheckoutReturn, useStillPaid } from "./Checkout.jsx";

window.paid = []; // every onPaid call, for the tests
window.revoked = []; // every onRevoked call
window.effectRuns = 0;

// StrictMode runs a new effect twice in a development build: the tests check that it did.
function EffectProbe() {
  useEffect(() => {
    window.effectRuns += 1;
  }, []);
  return null;
}

// The paid board, as an app shows it: it asks every 300 ms (the README's default is a minute)
// whether the payment still stands.
function Board({ imageId, sessionId, onRevoked }) {
  useStillPaid(sessionId, onRevoked, 300);
  return <p data-testid="paid">Paid {imageId}</p>;
}

function App() {
  const [board, setBoard] = useState(null);
  const [revoked, setRevoked] = useState(null);
  const onPaid = useCallback((imageId, sessionId) => {
    window.paid.push([imageId, sessionId]);
    setBoard({ imageId, sessionId });
  }, []);
  const onRevoked = useCallback((outcome) => {
    window.revoked.push(outcome);
    setBoard(null);
    setRevoked(outcome);
  }, []);
  const imageId = new URLSearchParams(window.location.search).get("imageId") ?? "img_e2e";
  const onReturnPage = window.location.pathname.startsWith("/hero-me");
  const startAgain = () => window.location.assign(`/?imageId=${encodeURIComponent(imageId)}`);
  return (
    <>
      <EffectProbe />
      <h1>Hero Me</h1>
      {board && <Board {...board} onRevoked={onRevoked} />}
      {revoked && <p data-testid="revoked">Access removed: {revoked}</p>}
      {onReturnPage && <CheckoutReturn onPaid={onPaid} onNewCheckout={startAgain} />}
      {!onReturnPage && !board && !revoked && (
        <Checkout key={imageId} imageId={imageId} onPaid={onPaid} />
      )}
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
