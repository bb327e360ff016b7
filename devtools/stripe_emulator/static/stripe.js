/*
 * A stand-in for Stripe.js, embedded Checkout only, served by the local Stripe emulator
 * (devtools/stripe_emulator). It is not Stripe's code and never talks to Stripe.
 *
 * Load it with a plain <script> before your app's code: @stripe/stripe-js's loadStripe() then uses
 * this window.Stripe instead of fetching Stripe's. The form lives in an iframe served by the
 * emulator, as Stripe's lives in one served by Stripe. docs/local-browser.md lists the differences.
 */
(function () {
  "use strict";

  var ORIGIN = new URL(document.currentScript.src).origin;
  var FRAME_URL = ORIGIN + "/embedded-checkout";
  var live = null; // Stripe allows one embedded Checkout at a time, until destroy()

  function IntegrationError(message) {
    var error = new Error(message);
    error.name = "IntegrationError";
    return error;
  }

  function refuse(name) {
    return function () {
      return Promise.resolve({
        error: {
          type: "invalid_request_error",
          message:
            "stripe." + name + "() is not available: the local Stripe emulator's Stripe.js " +
            "only supports embedded Checkout (createEmbeddedCheckoutPage).",
        },
      });
    };
  }

  function Stripe(publishableKey) {
    if (typeof publishableKey !== "string" || publishableKey === "") {
      throw IntegrationError(
        "Please call Stripe() with your publishable key. You used an empty string.",
      );
    }
    if (/^(sk|rk)_/.test(publishableKey)) {
      throw IntegrationError(
        "You should not use your secret key with Stripe.js. Please pass a publishable key instead.",
      );
    }
    if (!/^pk_(test|live)_/.test(publishableKey)) {
      throw IntegrationError("Invalid API Key provided: " + publishableKey.slice(0, 8) + "…");
    }

    return {
      createEmbeddedCheckoutPage: function (options) {
        try {
          return Promise.resolve(createEmbeddedCheckoutPage(options));
        } catch (error) {
          return Promise.reject(error);
        }
      },
      initEmbeddedCheckout: function () {
        throw IntegrationError(
          "stripe.initEmbeddedCheckout() has been renamed: call " +
            "stripe.createEmbeddedCheckoutPage() with the same options.",
        );
      },
      // @stripe/react-stripe-js checks that these exist before it accepts the object.
      elements: function () {
        throw IntegrationError(
          "stripe.elements() is not available: the local Stripe emulator's Stripe.js only " +
            "supports embedded Checkout (createEmbeddedCheckoutPage).",
        );
      },
      createToken: refuse("createToken"),
      createPaymentMethod: refuse("createPaymentMethod"),
      confirmCardPayment: refuse("confirmCardPayment"),
      _registerWrapper: function () {},
      registerAppInfo: function () {},
    };
  }
  Stripe.version = "endive"; // what @stripe/stripe-js 10 expects; anything else makes it warn

  function createEmbeddedCheckoutPage(options) {
    if (!options || typeof options !== "object") {
      throw IntegrationError("createEmbeddedCheckoutPage() requires an options object.");
    }
    var fetchSecret = options.fetchClientSecret;
    if (typeof fetchSecret !== "function") {
      if (typeof options.clientSecret !== "string") {
        throw IntegrationError(
          "Invalid createEmbeddedCheckoutPage() parameter: fetchClientSecret must be a function " +
            "that resolves with the Checkout Session's client_secret.",
        );
      }
      var given = options.clientSecret; // deprecated by Stripe, still accepted
      fetchSecret = function () {
        return given;
      };
    }
    if (options.onComplete !== undefined && typeof options.onComplete !== "function") {
      throw IntegrationError(
        "Invalid createEmbeddedCheckoutPage() parameter: onComplete must be a function.",
      );
    }
    if (live) {
      throw IntegrationError("You cannot have multiple Embedded Checkout objects.");
    }
    live = new EmbeddedCheckout(fetchSecret, options.onComplete);
    return live.api;
  }

  function EmbeddedCheckout(fetchSecret, onComplete) {
    var self = this;
    var state = "created"; // created, mounted, unmounted, destroyed
    var iframe = null;
    var onMessage = null;

    // Called once, right away, as Stripe does; a rejection shows in the frame and the console.
    var secret = Promise.resolve()
      .then(function () {
        return fetchSecret();
      })
      .then(function (value) {
        if (typeof value !== "string" || value.indexOf("_secret_") < 0) {
          throw IntegrationError(
            "fetchClientSecret() must resolve with a Checkout Session client_secret; got " +
              typeof value + ".",
          );
        }
        return value;
      });
    secret.catch(function (error) {
      console.error("IntegrationError: fetchClientSecret() failed:", error);
    });

    function post(message) {
      iframe.contentWindow.postMessage(message, ORIGIN);
    }

    function handle(event) {
      if (!iframe || event.source !== iframe.contentWindow || event.origin !== ORIGIN) return;
      var data = event.data || {};
      if (data.type === "resize") {
        iframe.style.height = Math.ceil(data.height) + "px";
      } else if (data.type === "complete") {
        if (data.redirect_on_completion === "always" && data.return_url) {
          window.top.location.assign(data.return_url);
        } else if (onComplete) {
          onComplete();
        }
      }
    }

    function mount(target) {
      if (state === "destroyed") {
        throw IntegrationError(
          "This Embedded Checkout object has been destroyed. Create a new one with " +
            "stripe.createEmbeddedCheckoutPage().",
        );
      }
      if (state === "mounted") {
        throw IntegrationError("This Embedded Checkout object is already mounted.");
      }
      var element = typeof target === "string" ? document.querySelector(target) : target;
      if (typeof target === "string" && !element) {
        throw IntegrationError(
          "The selector you specified (" + target + ") applies to no DOM elements that are " +
            "currently on the page. Make sure the element exists on the page before calling " +
            "mount().",
        );
      }
      if (!(element instanceof Element)) {
        throw IntegrationError(
          "Invalid DOM element. Make sure to call mount() with a valid DOM element or selector.",
        );
      }
      iframe = document.createElement("iframe");
      iframe.src = FRAME_URL + "?parent_origin=" + encodeURIComponent(window.location.origin);
      iframe.name = "embedded-checkout";
      iframe.title = "Secure payment form (local Stripe emulator)";
      iframe.allow = "payment";
      iframe.style.cssText = "width:100%;height:560px;border:0;display:block;color-scheme:normal";
      onMessage = handle;
      window.addEventListener("message", onMessage);
      var frame = iframe;
      frame.addEventListener("load", function () {
        if (frame !== iframe) return; // unmounted meanwhile
        secret.then(
          function (clientSecret) {
            if (frame === iframe) post({ type: "init", client_secret: clientSecret });
          },
          function () {
            if (frame === iframe) post({ type: "fetch_failed" });
          },
        );
      });
      element.appendChild(iframe);
      state = "mounted";
    }

    function detach() {
      if (onMessage) window.removeEventListener("message", onMessage);
      if (iframe && iframe.parentNode) iframe.parentNode.removeChild(iframe);
      iframe = null;
      onMessage = null;
    }

    function unmount() {
      if (state !== "mounted") {
        throw IntegrationError("This Embedded Checkout object is not mounted.");
      }
      detach();
      state = "unmounted";
    }

    function destroy() {
      detach();
      state = "destroyed";
      if (live === self) live = null;
    }

    this.api = { mount: mount, unmount: unmount, destroy: destroy };
  }

  window.Stripe = Stripe;
})();
