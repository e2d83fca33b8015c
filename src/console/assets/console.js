// walhook console: live refresh of the parts of a page marked data-live.
// Every second (while the tab is visible) the page is fetched again and each element with
// a data-live attribute is replaced by the element of the same id in the fresh copy. The
// fresh copy is server-rendered and escaped like the page itself; no HTML is built here.
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  if (live.length === 0) { return; }
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "X-Console-Live": "1" } })
      .then(function (r) {
        if (r.redirected || !r.ok) { throw new Error("status " + r.status); }
        return r.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next) { el.replaceWith(document.importNode(next, true)); }
        });
        document.documentElement.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* keep the last view; try again next tick */ })
      .finally(function () { busy = false; });
  }
  window.setInterval(refresh, 1000);
})();
