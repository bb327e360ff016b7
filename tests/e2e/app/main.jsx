// The page the end-to-end tests open: the README's component (Checkout.jsx, copied from the README
// by the test) inside <StrictMode>, as a React app renders it in development.
import { StrictMode, useCallback, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { Checkout, CheckoutReturn } from "./Checkout.jsx";

window.paid = []; // every onPaid call, for the tests
window.effectRuns = 0;

// StrictMode runs a new effect twice in a development build: the tests check that it did.
function EffectProbe() {
  useEffect(() => {
    window.effectRuns += 1;
  }, []);
  return null;
}

function App() {
  const [paidImage, setPaidImage] = useState(null);
  const onPaid = useCallback((imageId) => {
    window.paid.push(imageId);
    setPaidImage(imageId);
  }, []);
  const imageId = new URLSearchParams(window.location.search).get("imageId") ?? "img_e2e";
  const onReturnPage = window.location.pathname.startsWith("/hero-me");
  const startAgain = () => window.location.assign(`/?imageId=${encodeURIComponent(imageId)}`);
  return (
    <>
      <EffectProbe />
      <h1>Hero Me</h1>
      {paidImage && <p data-testid="paid">Paid {paidImage}</p>}
      {onReturnPage && <CheckoutReturn onPaid={onPaid} onNewCheckout={startAgain} />}
      {!onReturnPage && !paidImage && <Checkout key={imageId} imageId={imageId} onPaid={onPaid} />}
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
