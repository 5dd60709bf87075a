// The Palisade console's one script (served from /ui/static; the CSP allows no other).
// Live updates: /ui/live sends `publish` and `heartbeat` events; on either, the page fetches its own URL
// with ?fragment=1 and swaps <main id="content"> for the answer. Filter forms become navigations (the
// CSP's form-action 'none' forbids submitting them). Nothing here writes: the console is read-only.
(function () {
  "use strict";
  var status = document.getElementById("live");
  var busy = false, again = false, deferred = false;

  function say(text, cls) {
    if (status) { status.textContent = text; status.className = "live " + cls; }
  }

  function typing() {
    // Someone is writing in a filter box: swapping the content now would throw the text away.
    var el = document.activeElement;
    var main = document.getElementById("content");
    return !!(el && main && main.contains(el) && (el.tagName === "INPUT" || el.tagName === "SELECT"));
  }

  function reload() {
    if (busy) { again = true; return; }
    if (typing()) {
      if (!deferred) { deferred = true; window.setTimeout(function () { deferred = false; reload(); }, 1000); }
      return;
    }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (text) {
        // A <template> parses the server's (escaped) markup inertly: nothing in it loads or runs.
        var tpl = document.createElement("template");
        tpl.innerHTML = text;
        var fresh = tpl.content.querySelector("main#content");
        var current = document.getElementById("content");
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
          bindForms();
          document.body.setAttribute("data-updated", String(Date.now()));
          document.dispatchEvent(new CustomEvent("palisade:updated"));
        }
      })
      .catch(function () { say("update failed", "bad"); })
      .then(function () {
        busy = false;
        if (again) { again = false; window.setTimeout(reload, 200); }
      });
  }

  function bindForms() {
    var forms = document.querySelectorAll("form.filter");
    Array.prototype.forEach.call(forms, function (form) {
      if (form.getAttribute("data-bound")) { return; }
      form.setAttribute("data-bound", "1");
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var url = new URL(form.getAttribute("action") || window.location.pathname, window.location.href);
        new FormData(form).forEach(function (value, key) {
          if (String(value).trim() !== "") { url.searchParams.append(key, String(value).trim()); }
        });
        window.location.assign(url.toString());
      });
    });
  }

  bindForms();
  if (window.EventSource) {
    var source = new EventSource("/ui/live");
    source.addEventListener("open", function () { say("live", "ok"); });
    source.addEventListener("error", function () { say("reconnecting", "bad"); });
    source.addEventListener("publish", function () { say("live", "ok"); reload(); });
    source.addEventListener("heartbeat", function () { say("live", "ok"); reload(); });
    window.addEventListener("pagehide", function () { source.close(); });
  }
})();
