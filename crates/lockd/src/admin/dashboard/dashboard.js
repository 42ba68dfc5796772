// lockd dashboard: polls /v1/locks once a second (hottest resources first, filtered and cut to
// a page on the server, so 10,000 busy resources cost the browser no more than 200), renders
// holders and queues with textContent only (names come from clients), and ticks every age
// between polls from the moment of the fetch.
"use strict";

const POLL_MS = 1000;
const TICK_MS = 250;
const FETCH_TIMEOUT_MS = 5000;
/// Waiters shown per resource before "and N more".
const QUEUE_SHOWN = 8;
/// Ages past these get a warning colour: a hold or wait this long is worth a look.
const LONG_MS = 60 * 1000;
const STUCK_MS = 15 * 60 * 1000;

const $ = (id) => document.getElementById(id);
const state = {
  fetchedAt: 0, // performance.now() of the last good answer
  lastOk: 0,
  shapeKey: null,
  ages: [], // [{el, base}] of the rendered age cells
  inFlight: false,
  timer: null,
};

function params() {
  const q = $("filter").value.trim();
  const search = new URLSearchParams({ sort: $("sort").value, limit: $("limit").value });
  if (q) search.set("q", q);
  return search;
}

function saveHash() {
  const search = new URLSearchParams();
  const q = $("filter").value.trim();
  if (q) search.set("q", q);
  if ($("sort").value !== "hot") search.set("sort", $("sort").value);
  if ($("limit").value !== "200") search.set("limit", $("limit").value);
  const hash = search.toString();
  history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
}

function loadHash() {
  const search = new URLSearchParams(location.hash.slice(1));
  $("filter").value = search.get("q") || "";
  for (const [id, fallback] of [["sort", "hot"], ["limit", "200"]]) {
    const value = search.get(id);
    const known = value && [...$(id).options].some((o) => o.value === value);
    $(id).value = known ? value : fallback;
  }
}

async function poll() {
  if (state.inFlight) return;
  state.inFlight = true;
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch("v1/locks?" + params(), {
      signal: controller.signal,
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error((body && body.error) || `HTTP ${response.status}`);
    }
    state.fetchedAt = performance.now();
    state.lastOk = Date.now();
    render(body);
    setLive("live", "live");
    $("error").hidden = true;
  } catch (err) {
    const why = err.name === "AbortError" ? "no answer within 5 s" : err.message;
    setLive("down", "disconnected");
    $("error").textContent =
      `lockd is not answering (${why}). Retrying; what is shown may be stale` +
      (state.lastOk ? ` since ${new Date(state.lastOk).toLocaleTimeString()}.` : ".");
    $("error").hidden = false;
  } finally {
    clearTimeout(timeout);
    state.inFlight = false;
  }
}

function setLive(stateName, text) {
  $("live").dataset.state = stateName;
  $("live-text").textContent = text;
}

function render(data) {
  $("server").textContent = data.server || "";
  const t = data.totals;
  $("total-busy").textContent = t.busy_resources.toLocaleString();
  $("total-holders").textContent = t.holders.toLocaleString();
  $("total-waiters").textContent = t.waiters.toLocaleString();
  $("total-sessions").textContent = t.sessions.toLocaleString();
  $("total-watches").textContent = t.watches.toLocaleString();
  document.title = t.waiters > 0 ? `lockd · ${t.waiters} waiting` : "lockd";

  // Rebuild the rows only when who holds and who waits changed, so that text stays selectable
  // and the page does no work beyond ticking while nothing moves.
  const key = shapeKey(data);
  if (key === state.shapeKey) {
    refreshAges(data);
  } else {
    state.shapeKey = key;
    rebuild(data);
  }

  const filtered = $("filter").value.trim() !== "";
  const empty = data.resources.length === 0;
  $("locks").hidden = empty;
  $("empty").hidden = !empty;
  if (empty) {
    $("empty").textContent = filtered
      ? "No busy resource matches the filter."
      : "No locks are held and nobody is waiting.";
  }
  const hidden = data.matching - data.resources.length;
  $("more").hidden = hidden <= 0;
  if (hidden > 0) {
    $("more").textContent =
      `Showing ${data.resources.length.toLocaleString()} of ${data.matching.toLocaleString()} ` +
      `${filtered ? "matching" : "busy"} resources` +
      ($("sort").value === "hot" ? ", hottest first" : "") +
      ". Narrow them down with the filter.";
  }
}

function shapeKey(data) {
  return JSON.stringify(
    data.resources.map((r) => [
      r.resource,
      r.delayed_ms != null,
      r.permits_used,
      r.watchers,
      r.holders.map((h) => [h.session, h.token, h.client, h.peer, h.value]),
      r.waiters.map((w) => [w.session, w.mode, w.permits, w.client, w.group]),
    ]),
  );
}

/// The same rows as last time: give each age cell its new base, in render order.
function refreshAges(data) {
  let i = 0;
  for (const r of data.resources) {
    for (const h of r.holders) state.ages[i++].base = h.held_ms;
    for (const w of r.waiters.slice(0, QUEUE_SHOWN)) state.ages[i++].base = w.waited_ms;
  }
  tick();
}

function rebuild(data) {
  state.ages = [];
  const rows = document.createDocumentFragment();
  for (const r of data.resources) rows.appendChild(row(r));
  $("rows").replaceChildren(rows);
  tick();
}

function row(r) {
  const tr = el("tr");
  if (r.waiters.length > 0) tr.className = "hot";
  tr.dataset.resource = r.resource;

  const name = el("td", "resource");
  const link = el("a", null, r.resource);
  link.href = "v1/locks/" + r.resource.split("/").map(encodeURIComponent).join("/");
  link.title = "This resource as JSON";
  name.appendChild(link);
  if (r.limit != null) {
    // A semaphore: how much of it is taken.
    name.appendChild(el("br"));
    name.appendChild(el("span", "permits", `${r.permits_used} of ${r.limit} permits used`));
  }
  if (r.waiters.length > 0) {
    name.appendChild(el("br"));
    name.appendChild(el("span", "queue-len", `${r.waiters.length} waiting`));
  }
  if (r.watchers > 0) {
    // Sessions told of every change (watches, election observers): who a release wakes.
    name.appendChild(el("br"));
    name.appendChild(el("span", "watchers", `${r.watchers} watching`));
  }
  tr.appendChild(name);

  const holders = el("td", "holders");
  if (r.holders.length === 0 && r.delayed_ms != null) {
    // A holder with a lock-delay lost the lock other than by release: nobody gets it yet.
    const delayed = el("span", "delayed", `nobody: lock-delay, free in ${duration(r.delayed_ms)}`);
    delayed.title = "Its last holder lost it without releasing it; the lock-delay it asked for " +
      "keeps the next holder out until the old one must have stopped.";
    holders.appendChild(delayed);
  } else if (r.holders.length === 0) {
    holders.appendChild(el("span", "none", "nobody (next grant pending)"));
  } else {
    const list = el("ol", "entries");
    for (const h of r.holders) {
      const li = el("li", "holder");
      li.appendChild(mode(h.mode, h.permits));
      li.appendChild(who(h, `token ${h.token}`));
      li.appendChild(age("held for", h.held_ms));
      if (h.value != null) {
        // A campaign's holder: the election's leader, with what it told observers.
        const leads = el("span", "campaign", `leads as ${h.value}`);
        leads.title = "This holder campaigned for the lock (leader election) with this value";
        li.appendChild(leads);
      }
      if (h.lock_delay_ms) {
        const note = el("span", "lock-delay", `lock-delay ${duration(h.lock_delay_ms)}`);
        note.title = "If this holder loses the lock without releasing it, nobody gets it for this long";
        li.appendChild(note);
      }
      list.appendChild(li);
    }
    holders.appendChild(list);
  }
  tr.appendChild(holders);

  const waiters = el("td", "waiters");
  if (r.waiters.length === 0) {
    waiters.appendChild(el("span", "none", "—"));
  } else {
    const list = el("ol", "entries");
    for (const w of r.waiters.slice(0, QUEUE_SHOWN)) {
      const li = el("li", "waiter");
      li.appendChild(el("span", "pos", `#${w.position}`));
      li.appendChild(mode(w.mode, w.permits));
      li.appendChild(who(w));
      li.appendChild(age("waiting for", w.waited_ms));
      // A multi-resource acquire waits in every one of its queues and is granted in all at once.
      if (w.group != null) li.appendChild(el("span", "group", `all at once: ${w.group.join(", ")}`));
      list.appendChild(li);
    }
    if (r.waiters.length > QUEUE_SHOWN) {
      list.appendChild(el("li", "none", `and ${r.waiters.length - QUEUE_SHOWN} more`));
    }
    waiters.appendChild(list);
  }
  tr.appendChild(waiters);
  return tr;
}

/// The mode, or for a semaphore's holder or waiter its permits.
function mode(m, permits) {
  if (permits != null) return el("span", `mode ${m}`, `${permits} permit${permits === 1 ? "" : "s"}`);
  return el("span", `mode ${m}`, m);
}

/// The client name (or the session, for a client that gave none) over the other facts.
function who(entry, extra) {
  const span = el("span", "who");
  const details = [`session ${entry.session}`];
  if (entry.peer) details.push(entry.peer);
  if (extra) details.push(extra);
  if (entry.client) {
    span.appendChild(el("span", "client", entry.client));
  } else {
    span.appendChild(el("span", "client anonymous", details.shift()));
  }
  span.appendChild(el("span", "details", details.join(" · ")));
  return span;
}

function age(title, base) {
  const span = el("span", "age");
  span.title = title;
  state.ages.push({ el: span, base });
  return span;
}

function tick() {
  const since = state.fetchedAt ? performance.now() - state.fetchedAt : 0;
  for (const a of state.ages) {
    const ms = a.base + since;
    const text = duration(ms);
    if (a.el.textContent !== text) a.el.textContent = text;
    const cls = ms >= STUCK_MS ? "age stuck" : ms >= LONG_MS ? "age long" : "age";
    if (a.el.className !== cls) a.el.className = cls;
  }
}

function duration(ms) {
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function start() {
  loadHash();
  let debounce = null;
  const changed = () => {
    saveHash();
    clearTimeout(debounce);
    debounce = setTimeout(poll, 150);
  };
  $("filter").addEventListener("input", changed);
  $("sort").addEventListener("change", changed);
  $("limit").addEventListener("change", changed);
  // A pasted or edited link (#q=...&sort=...&limit=...) applies at once.
  window.addEventListener("hashchange", () => {
    loadHash();
    poll();
  });
  poll();
  setInterval(poll, POLL_MS);
  setInterval(tick, TICK_MS);
}

document.addEventListener("DOMContentLoaded", start);
