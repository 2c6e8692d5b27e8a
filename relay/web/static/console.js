// The console's only script: live countdowns to each lift, lift times in the viewer's
// zone, the viewer's zone offered in forms, and the delivery matrix refreshed every 2 s.
"use strict";

function span(ms) {
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const parts = [];
  if (d) parts.push(d + "d");
  if (d || h) parts.push(h + "h");
  parts.push(m + "m", s + "s");
  return parts.join(" ");
}

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll(".countdown[data-lift]")) {
    const left = Date.parse(el.dataset.lift) - now;
    el.textContent = left > 0 ? "in " + span(left) : "lift due (" + span(left) + " ago)";
  }
}

function localTimes() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  });
  for (const el of document.querySelectorAll(".lift[data-lift] > .local")) {
    const when = new Date(el.parentElement.dataset.lift);
    el.textContent = "(" + format.format(when) + ", " + zone + ")";
  }
  for (const input of document.querySelectorAll("input.viewer-zone")) {
    if (input.value === "UTC" && zone) input.value = zone;
  }
}

async function refresh(box) {
  try {
    const answer = await fetch(box.dataset.refresh, {
      headers: { "X-Requested-With": "console" }, credentials: "same-origin", cache: "no-store",
    });
    if (answer.status === 401) { window.location.assign("/login"); return; }
    if (answer.ok) {
      const html = await answer.text();
      if (html !== box.dataset.shown) {
        box.dataset.shown = html;
        // The fragment comes from this console's own autoescaped template.
        box.innerHTML = html;
      }
    }
  } catch (e) {
    // The console may be restarting: try again at the next beat.
  }
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  localTimes();
  for (const box of document.querySelectorAll("[data-refresh]")) {
    setInterval(() => refresh(box), 2000);
  }
});
