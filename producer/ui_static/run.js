// A run that is not final is followed: its events (Server-Sent Events, sent with the session
// cookie) trigger a fetch of the page's changing part, at most a few times a second. A slow
// poll covers an event stream that a proxy holds back.
(() => {
  "use strict";
  const live = document.getElementById("live");
  const follow = document.getElementById("follow");
  if (!live || !live.dataset.eventsUrl) return;
  const STEP_EVENTS = [
    "queued", "started", "llm_call_started", "llm_call_finished", "step_finished",
    "tool_call_started", "tool_call_finished", "context_trimmed", "llm_retry", "llm_wait",
  ];
  const FINAL_EVENTS = ["succeeded", "failed", "cancelled"];
  let timer = null;
  let busy = false;
  let again = false;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(live.dataset.liveUrl, { cache: "no-store" });
      if (response.status === 401) {
        window.location.assign(live.dataset.loginUrl);
        return;
      }
      if (response.ok) live.innerHTML = await response.text();
    } finally {
      busy = false;
      if (again) { again = false; soon(); }
    }
  }

  function soon() {
    if (timer !== null) return;
    timer = window.setTimeout(() => { timer = null; refresh().catch(() => {}); }, 200);
  }

  const source = new EventSource(live.dataset.eventsUrl);
  const poll = window.setInterval(soon, 10000);
  for (const kind of STEP_EVENTS) source.addEventListener(kind, soon);
  for (const kind of FINAL_EVENTS) {
    source.addEventListener(kind, () => {
      // The stream ends after the final event: without close() the browser would reconnect.
      source.close();
      window.clearInterval(poll);
      if (follow) follow.textContent = "The run " + kind + ".";
      soon();
    });
  }
})();
