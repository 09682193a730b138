// The Now page's live part: fetch the server-rendered fragment every few
// seconds and swap it in. No framework; a failed fetch keeps what is shown.
(function () {
  var box = document.getElementById("live");
  if (!box) return;
  var every = 1000 * (parseInt(box.getAttribute("data-every"), 10) || 5);
  function refresh() {
    fetch(box.getAttribute("data-src"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (r.ok) return r.text(); throw new Error(r.status); })
      .then(function (html) { box.innerHTML = html; })
      .catch(function () { /* next time */ })
      .finally(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
