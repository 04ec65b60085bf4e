// The inspector's behaviour: live sections over Server-Sent Events, actions through the
// JSON API, copy buttons. The server renders and escapes every piece of data; this script
// only swaps server-rendered sections and sets its own messages with textContent.
"use strict";

// However busy the relay is, a page refreshes at most about five times a second.
const REFRESH_GAP_MS = 200;
let refreshing = false;
let refreshAgain = false;

function flash(text, isError) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = text;
  box.classList.toggle("error", Boolean(isError));
  box.hidden = false;
}

// Replaces every [data-live] section with its fresh server rendering, keeping which
// <details> were open and marking rows that were not there before.
async function swapSections() {
  const response = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
  if (response.redirected && new URL(response.url).pathname === "/login") {
    location.assign(response.url);
    return;
  }
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const old of document.querySelectorAll("[data-live]")) {
    const next = fresh.getElementById(old.id);
    if (!next) continue;
    const opened = new Map([...old.querySelectorAll("details[id]")].map((d) => [d.id, d.open]));
    const seen = new Set([...old.querySelectorAll("[data-row]")].map((row) => row.dataset.row));
    const adopted = document.importNode(next, true);
    for (const details of adopted.querySelectorAll("details[id]")) {
      if (opened.has(details.id)) details.open = opened.get(details.id);
    }
    for (const row of adopted.querySelectorAll("[data-row]")) {
      if (!seen.has(row.dataset.row)) row.classList.add("fresh");
    }
    old.replaceWith(adopted);
  }
}

async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    do {
      refreshAgain = false;
      await swapSections();
      if (refreshAgain) await new Promise((resolve) => setTimeout(resolve, REFRESH_GAP_MS));
    } while (refreshAgain);
  } catch (error) {
    flash(`Could not refresh: ${error.message}`, true);
  } finally {
    refreshing = false;
  }
}

function concernsThisPage(change) {
  const eventId = document.body.dataset.eventId;
  return !eventId || change.id === eventId || change.event_id === eventId;
}

function setLive(state) {
  const badge = document.getElementById("live");
  if (!badge) return;
  badge.classList.toggle("on", state === "live");
  badge.textContent = state;
}

// No polling loop: the page changes only when the stream says something changed.
function listen() {
  if (!document.querySelector("[data-live]") || !window.EventSource) return;
  const stream = new EventSource("/api/stream");
  const onChange = (message) => {
    let change = {};
    try {
      change = JSON.parse(message.data);
    } catch {
      // A change we cannot read still means the page may be stale.
    }
    if (concernsThisPage(change)) refresh();
  };
  stream.addEventListener("event", onChange);
  stream.addEventListener("delivery", onChange);
  stream.addEventListener("resync", () => refresh());
  // What changed between rendering the page and (re)connecting the stream.
  stream.addEventListener("open", () => {
    setLive("live");
    refresh();
  });
  // The browser retries by itself, except after an answer such as 401 (logged out).
  stream.addEventListener("error", () => {
    setLive(stream.readyState === EventSource.CLOSED ? "offline: reload the page" : "reconnecting");
  });
}

function parsePairs(text) {
  const pairs = {};
  for (const line of text.split("\n")) {
    const item = line.trim();
    if (!item) continue;
    const at = item.indexOf("=");
    if (at < 1) throw new Error(`metadata: "${item}" is not KEY=VALUE`);
    pairs[item.slice(0, at).trim()] = item.slice(at + 1).trim();
  }
  return pairs;
}

function formBody(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled) continue;
    const value = field.value.trim();
    if ("pairs" in field.dataset) body[field.name] = parsePairs(value);
    else if (value) body[field.name] = value;
  }
  return body;
}

function describeError(status, answer) {
  const detail = answer.detail === undefined || answer.detail === null ? "" : answer.detail;
  const text = typeof detail === "string" ? detail : JSON.stringify(detail);
  return `${status} ${answer.error || "error"}${text ? `: ${text}` : ""}`;
}

// Sends an action to the API: the header marks it as the inspector's own (see the README).
async function act(source, body) {
  if (source.dataset.confirm && !window.confirm(source.dataset.confirm)) return false;
  const [method, url] = source.dataset.api.split(" ");
  const response = await fetch(url, {
    method,
    headers: { "X-Pulse-Relay": "1", "Content-Type": "application/json", Accept: "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try {
    answer = await response.json();
  } catch {
    // An empty or non-JSON answer: the status says enough.
  }
  if (!response.ok) {
    flash(describeError(response.status, answer), true);
    return false;
  }
  if (source.dataset.then) {
    location.assign(source.dataset.then);
    return true;
  }
  // data-done may name fields of the answer: "Replaying {queued} deliveries."
  flash((source.dataset.done || "Done.").replace(/\{(\w+)\}/g, (_, key) => String(answer[key] ?? "")));
  await refresh();
  return true;
}

function copyWithSelection(text) {
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

async function copy(button) {
  const source = document.getElementById(button.dataset.copy);
  const text = source ? source.textContent : "";
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // The clipboard API exists only in secure contexts (an admin host reached over plain http).
    copyWithSelection(text);
  }
  button.textContent = "Copied";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1200);
}

document.addEventListener("click", (event) => {
  const copyButton = event.target.closest("button[data-copy]");
  if (copyButton) {
    // Inside a <summary>, the click would also open or close the block.
    event.preventDefault();
    copy(copyButton);
    return;
  }
  const button = event.target.closest("button[data-api]");
  if (!button) return;
  event.preventDefault();
  act(button, button.dataset.body ? JSON.parse(button.dataset.body) : undefined);
});

// "Edit and replay": the envelope is checked here before it is sent (the API checks it
// again, by the same rules: a JSON object of at most 1 MiB encoded).
const MAX_ENVELOPE_BYTES = 1024 * 1024;

function editedBody(form) {
  const sinks = [...form.querySelectorAll('input[name="sinks"]:checked')].map((box) => box.value);
  if (!sinks.length) throw new Error("sinks: choose at least one sink");
  let envelope;
  try {
    envelope = JSON.parse(form.elements.envelope.value);
  } catch (error) {
    throw new Error(`envelope: not valid JSON (${error.message})`);
  }
  if (envelope === null || typeof envelope !== "object" || Array.isArray(envelope)) {
    throw new Error("envelope: must be a JSON object");
  }
  if (new TextEncoder().encode(JSON.stringify(envelope)).length > MAX_ENVELOPE_BYTES) {
    throw new Error("envelope: over 1 MiB once encoded");
  }
  return { sinks, envelope };
}

function showEditError(form, text) {
  const box = form.querySelector("[data-edit-error]");
  if (!box) return;
  box.textContent = text;
  box.hidden = !text;
}

// Until the text is edited, it shows the envelope the first chosen sink received.
document.addEventListener("input", (event) => {
  if (event.target.closest("form[data-edit-envelope] textarea")) event.target.dataset.touched = "";
});

document.addEventListener("change", (event) => {
  const box = event.target.closest('form[data-edit-envelope] input[name="sinks"]');
  if (!box) return;
  const area = box.form.elements.envelope;
  const first = box.form.querySelector('input[name="sinks"]:checked');
  if (first && !("touched" in area.dataset)) area.value = first.dataset.envelope;
});

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-api]");
  if (!form) return;
  event.preventDefault();
  const isEdit = "editEnvelope" in form.dataset;
  let body;
  try {
    body = isEdit ? editedBody(form) : formBody(form);
  } catch (error) {
    showEditError(form, error.message);
    flash(error.message, true);
    return;
  }
  showEditError(form, "");
  act(form, body).then((isDone) => {
    // An edited envelope stays in place, to be edited and sent again.
    if (isDone && !isEdit) form.reset();
  });
});

listen();
