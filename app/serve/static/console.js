// Orbit console: live updates from server-sent events, confirmations, JSON checks, select-all.
// No inline script anywhere (the Content-Security-Policy forbids it): everything is here.
(function () {
  "use strict";

  // At most one refresh a second, and always one after the last change: htmx's throttle drops
  // the events inside its window, so a run that went running then succeeded within a second
  // stayed "running" on the page until something else changed.
  var queued = null, last = 0;
  function changed() {
    if (queued) return;
    queued = window.setTimeout(function () {
      queued = null;
      last = Date.now();
      document.body.dispatchEvent(new CustomEvent("orbit-changed"));
    }, Math.max(0, last + 1000 - Date.now()));
  }

  function listen() {
    if (!window.EventSource) return;
    var live = document.getElementById("live");
    var source = new EventSource("/api/events");
    source.addEventListener("open", function () { if (live) live.className = "live on"; });
    source.addEventListener("error", function () { if (live) live.className = "live off"; });
    source.addEventListener("run", changed);
    source.addEventListener("fleet", changed);
  }

  function placeSpans(root) {
    root.querySelectorAll(".timeline .span").forEach(function (el) {
      el.style.left = el.dataset.left + "%";
      el.style.width = el.dataset.width + "%";
    });
  }

  function checkJson(form) {
    var bad = null;
    form.querySelectorAll("textarea[data-json]").forEach(function (area) {
      try {
        var value = JSON.parse(area.value || "{}");
        if (value === null || typeof value !== "object" || Array.isArray(value)) {
          bad = "params must be a JSON object";
        }
      } catch (e) {
        bad = "params are not valid JSON: " + e.message;
      }
      area.setCustomValidity(bad || "");
    });
    return bad;
  }

  function notice(text) {
    var box = document.getElementById("notice");
    if (!box) return;
    var p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    box.replaceChildren(p);
  }

  document.addEventListener("DOMContentLoaded", function () {
    listen();
    placeSpans(document);
  });

  document.addEventListener("htmx:afterSwap", function (event) { placeSpans(event.target); });

  // Refuse a request before it leaves: a confirmation declined, or JSON that does not parse.
  document.addEventListener("htmx:confirm", function (event) {
    var trigger = event.detail.elt;
    var form = trigger.closest("form");
    if (form) {
      var bad = checkJson(form);
      if (bad) { event.preventDefault(); notice(bad); return; }
    }
    var question = trigger.dataset && trigger.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // Errors come back as fragments with a 4xx: show them instead of dropping them.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status >= 400 && event.detail.xhr.status < 500) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
      event.detail.target = document.getElementById("notice");
    }
  });

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.classList && box.classList.contains("select-all")) {
      box.closest("table").querySelectorAll("input[name=ids]").forEach(function (c) { c.checked = box.checked; });
    }
  });

  // An action's notice fades after a while, unless it is an error.
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target.id === "notice" && !event.target.querySelector(".error")) {
      window.setTimeout(function () { event.target.replaceChildren(); }, 8000);
    }
  });
})();
