// The live sessions page: polls overview.json and redraws. Every value may come from a SIP header,
// so it goes into the document as text (textContent), never as markup.
"use strict";

const POLL_MS = 2000;
let filterText = "";
let timer = null;
let polling = false;
let again = false;

function $(selector, root = document) { return root.querySelector(selector); }

function text(element, value) { element.textContent = value; return element; }

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = n, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function rate(bitsPerSecond) {
  return `${(bitsPerSecond / 1e6).toFixed(2)} Mbit/s`;
}

function relayRow(relay) {
  const row = document.createElement("tr");
  row.dataset.relay = relay.ip;
  if (relay.status !== "active") row.className = "down";
  const paths = relay.paths || {};
  const status = relay.drained ? `${relay.status}, drained` : relay.status;
  const cells = [
    relay.ip, status, relay.sessions, relay.streams,
    [paths.kernel || 0, paths.userspace || 0, paths.learning || 0, paths["on hold"] || 0].join(" / "),
    `${relay.ports_used} / ${relay.ports_free}`, rate(relay.bps_relayed), duration(relay.uptime),
  ];
  for (const value of cells) row.appendChild(text(document.createElement("td"), String(value)));
  return row;
}

function streamItem(stream) {
  const item = $("#stream").content.firstElementChild.cloneNode(true);
  text($(".media", item), stream.media);
  const path = stream.path || stream.status;
  const badge = text($(".path", item), path);
  badge.classList.add(path.replace(/\s+/g, "-"));
  const codecs = stream.caller_codec === stream.callee_codec ? stream.caller_codec : `${stream.caller_codec} / ${stream.callee_codec}`;
  text($(".codecs", item), codecs);
  for (const side of ["caller", "callee"]) {
    const leg = $(`.leg.${side}`, item);
    text($(".address", leg), stream[side]);
    const traffic = text($(".traffic", leg), `sent ${stream[`${side}_packets`]} packets, ${bytes(stream[`${side}_bytes`])}`);
    traffic.dataset.packets = stream[`${side}_packets`];
  }
  return item;
}

function callItem(call) {
  const item = $("#call").content.firstElementChild.cloneNode(true);
  item.dataset.callId = call.call_id;
  text($(".from", item), call.from_uri || "(unknown caller)");
  text($(".to", item), call.to_uri || "(unknown callee)");
  text($(".duration", item), call.answered ? duration(call.duration) : "ringing");
  text($(".relay", item), call.relay);
  text($(".call-id", item), call.call_id);
  const agents = [call.caller_ua, call.callee_ua].filter((ua) => ua && ua !== "Unknown");
  text($(".agents", item), agents.join(" ↔ "));
  const streams = $(".streams", item);
  for (const stream of call.streams) streams.appendChild(streamItem(stream));
  return item;
}

function render(data) {
  const up = data.relays.filter((relay) => relay.status === "active").length;
  const calls = (n) => (n === 1 ? "1 call" : `${n} calls`);
  const shown = data.matching === data.calls ? calls(data.calls) : `${data.matching} of ${calls(data.calls)} match`;
  const more = data.sessions.length < data.matching ? ` (newest ${data.sessions.length} shown)` : "";
  const when = new Date(data.generated_at * 1000).toLocaleTimeString();
  text($("#totals"), `${shown}${more} on ${up} of ${data.relays.length} relays · updated ${when}`);
  $("#relays tbody").replaceChildren(...data.relays.map(relayRow));
  $("#calls").replaceChildren(...data.sessions.map(callItem));
  const problem = $("#problem");
  problem.hidden = !data.stale;
  if (data.stale) text(problem, "The dispatcher could not reach its relays; showing nothing until it can.");
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
}

// one request at a time: a filter typed during a request asks again once it is answered
async function poll() {
  if (polling) { again = true; return; }
  polling = true;
  clearTimeout(timer);
  try {
    const query = new URLSearchParams({ q: filterText });
    const response = await fetch(`overview.json?${query}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`the dispatcher answered ${response.status}`);
    render(await response.json());
  } catch (error) {
    const problem = $("#problem");
    problem.hidden = false;
    text(problem, `Not updated: ${error.message}`);
  }
  polling = false;
  if (again) {
    again = false;
    poll();
  } else {
    timer = setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#filter").addEventListener("input", (event) => {
    filterText = event.target.value;
    poll();
  });
  poll();
});
