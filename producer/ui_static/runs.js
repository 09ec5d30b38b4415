// The run list's first page follows new runs: its results are fetched again every few
// seconds (while the tab is visible and the box is ticked) and swapped in when they changed.
(() => {
  "use strict";
  const results = document.getElementById("results");
  const toggle = document.getElementById("live-toggle");
  const updated = document.getElementById("updated");
  if (!results || !results.dataset.rowsUrl || !toggle) return;
  const every = Number(results.dataset.refresh || "3") * 1000;
  let last = results.innerHTML;

  async function refresh() {
    // Swapping the table under the keyboard would lose the reader's place.
    if (!toggle.checked || document.hidden || results.contains(document.activeElement)) return;
    const response = await fetch(results.dataset.rowsUrl, { cache: "no-store" });
    if (response.status === 401) {
      window.location.assign(results.dataset.loginUrl);
      return;
    }
    if (!response.ok) return;
    const html = await response.text();
    if (html !== last) {
      results.innerHTML = html;
      last = results.innerHTML;
    }
    updated.textContent = "Updated " + new Date().toLocaleTimeString();
  }

  window.setInterval(() => { refresh().catch(() => {}); }, every);
})();
