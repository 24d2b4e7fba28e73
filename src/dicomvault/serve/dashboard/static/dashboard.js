// dicomvault dashboard: refresh the first screen every 30 s while the tab is visible and nobody types.
(function () {
  if (location.pathname !== "/") return;
  var busy = false;
  document.addEventListener("input", function () { busy = true; });
  setInterval(function () {
    if (!busy && document.visibilityState === "visible") location.reload();
  }, 30000);
})();
