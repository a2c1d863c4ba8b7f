// Conveyor dashboard: live updates over Server-Sent Events, confirmations, select-all.
// Every form works without this file; it only makes pages update without a reload.
(function () {
  "use strict";

  function meta(name) {
    var el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") : "";
  }

  // Ask before destructive actions (buttons or forms with data-confirm).
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = (button && button.getAttribute("data-confirm")) || event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  document.addEventListener("change", function (event) {
    if (event.target.id === "select-all") {
      document.querySelectorAll('input[name="ids"]').forEach(function (box) { box.checked = event.target.checked; });
    }
  });

  var url = meta("conveyor-events");
  var main = document.getElementById("main");
  if (!url || !main || !window.EventSource || !window.fetch) return;
  var live = document.getElementById("live");
  var timer = null, busy = false, again = false, stale = false;

  // The user is choosing something: do not swap the page under them.
  function interacting() {
    if (document.querySelector('input[name="ids"]:checked')) return true;
    var active = document.activeElement;
    return !!(active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName));
  }

  function refresh() {
    timer = null;
    if (document.hidden) { stale = true; return; }  // a background tab catches up when shown
    if (busy) { again = true; return; }
    if (interacting()) { schedule(2000); return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-Partial": "1" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected || !response.ok) return null;
        return response.text();
      })
      .then(function (html) {
        if (html === null || interacting()) return;
        var doc = new DOMParser().parseFromString("<body>" + html + "</body>", "text/html");
        main.replaceChildren.apply(main, Array.prototype.slice.call(doc.body.childNodes));
        document.dispatchEvent(new CustomEvent("conveyor:updated"));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(300); }
      });
  }

  // At most one refresh per 300 ms however many events arrive.
  function schedule(delay) {
    if (timer === null) timer = window.setTimeout(refresh, delay);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && stale) { stale = false; schedule(0); }
  });

  var source = new EventSource(url);
  ["job", "queue", "worker", "reset"].forEach(function (kind) {
    source.addEventListener(kind, function () { schedule(300); });
  });
  source.onopen = function () { if (live) live.setAttribute("data-state", "open"); };
  source.onerror = function () { if (live) live.setAttribute("data-state", "closed"); };
})();
