// parley's web page: a little plain JavaScript, no build step, no library.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;

async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-CSRF-Token": csrfToken(), "Content-Type": "application/json" },
    body: body === undefined ? "" : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

function setBadge(badge, item) {
  badge.className = "badge status-" + item.status;
  badge.dataset.status = item.status;
  let text = item.status;
  if (item.status === "processing" && typeof item.progress === "number") {
    text += " " + Math.round(item.progress * 100) + "%";
  }
  badge.textContent = text;
}

// -- Recordings ---------------------------------------------------------------------------------

function recordingRow(item) {
  const row = document.createElement("tr");
  row.dataset.id = item.id;
  const name = document.createElement("td");
  const link = document.createElement("a");
  link.href = "/recordings/" + item.id;
  link.textContent = item.name;
  name.append(link);
  const status = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = "badge";
  status.append(badge);
  const reason = document.createElement("span");
  reason.className = "reason";
  status.append(" ", reason);
  const language = document.createElement("td");
  language.className = "language";
  const languages = document.createElement("td");
  languages.className = "languages";
  const length = document.createElement("td");
  length.textContent = item.duration_s.toFixed(1) + " s";
  row.append(name, status, language, languages, length);
  return row;
}

function updateRow(row, item) {
  setBadge(row.querySelector(".badge"), item);
  let reason = row.querySelector(".reason");
  if (!reason) {
    reason = document.createElement("span");
    reason.className = "reason";
    row.children[1].append(" ", reason);
  }
  reason.textContent = item.reason || "";
  row.querySelector(".language").textContent = item.language || "";
  row.querySelector(".languages").textContent = item.languages.join(", ");
}

async function refreshRecordings() {
  const pageNumber = Math.max(1, Number(new URLSearchParams(location.search).get("page")) || 1);
  const offset = (pageNumber - 1) * 50;
  const response = await fetch("/api/recordings?limit=50&offset=" + offset, { credentials: "same-origin" });
  if (!response.ok) return;
  const page = await response.json();
  document.getElementById("recordings-total").textContent = page.total;
  const body = document.querySelector("#recordings tbody");
  const empty = body.querySelector("tr.empty");
  if (empty && page.items.length) empty.remove();
  const existing = new Map([...body.querySelectorAll("tr[data-id]")].map((r) => [r.dataset.id, r]));
  const firstPage = pageNumber === 1;
  for (const item of [...page.items].reverse()) {
    let row = existing.get(item.id);
    if (!row && !firstPage) continue;  // a new upload belongs on page 1
    if (!row) {
      row = recordingRow(item);
      body.prepend(row);
    }
    updateRow(row, item);
  }
}

function initRecordings() {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  const status = document.getElementById("upload-status");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      status.textContent = "Ready to upload " + input.files[0].name + ".";
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) { status.textContent = "Choose a file first."; return; }
    const data = new FormData(form);
    status.textContent = "Uploading " + input.files[0].name + "…";
    const response = await fetch("/api/recordings", {
      method: "POST", body: data, headers: { "X-CSRF-Token": csrfToken() },
      credentials: "same-origin",
    });
    const result = await response.json().catch(() => ({}));
    if (response.ok) {
      status.textContent = "Uploaded " + result.name + ": captioning is queued.";
      form.reset();
      await refreshRecordings();
    } else {
      status.textContent = "Refused: " + ((result.error && result.error.message) || response.statusText);
    }
  });
  setInterval(() => {
    const busy = document.querySelector('#recordings .badge[data-status="pending"], #recordings .badge[data-status="processing"]');
    if (busy) refreshRecordings();
  }, 1000);
}

// -- Player -------------------------------------------------------------------------------------

async function loadTranscript(box, player) {
  const id = box.dataset.id;
  const language = box.dataset.language;
  const response = await fetch(`/api/recordings/${id}/captions?lang=${encodeURIComponent(language)}&format=json`,
    { credentials: "same-origin" });
  if (!response.ok) return;
  const track = await response.json();
  box.replaceChildren();
  for (const cue of track.cues) {
    const paragraph = document.createElement("p");
    paragraph.className = "cue";
    const words = cue.words.length ? cue.words : [{ word: cue.text, start_s: cue.start_s }];
    for (const word of words) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "word";
      button.dataset.start = word.start_s;
      button.textContent = word.word.trim();
      button.title = "Play from " + Number(word.start_s).toFixed(2) + " s";
      button.addEventListener("click", () => {
        player.currentTime = Number(button.dataset.start);
        player.play().catch(() => {});
      });
      paragraph.append(button, " ");
    }
    box.append(paragraph);
  }
  player.addEventListener("timeupdate", () => {
    for (const button of box.querySelectorAll("button.word")) {
      button.classList.toggle("past", Number(button.dataset.start) <= player.currentTime);
    }
  });
}

function initRegenerate(badge) {
  const form = document.getElementById("regenerate-form");
  const status = document.getElementById("regenerate-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const languages = document.getElementById("regenerate-languages").value
      .split(",").map((tag) => tag.trim()).filter((tag) => tag);
    const body = { languages };
    const model = document.getElementById("regenerate-model").value;
    if (model.startsWith("whisper:")) body.whisper = model.slice("whisper:".length);
    else if (model !== "default") body.model = model;
    body.task = document.getElementById("regenerate-task").value;
    const spoken = document.getElementById("regenerate-language").value.trim();
    body.language = spoken === "" ? null : spoken;
    body.skip_silence = document.getElementById("regenerate-skip-silence").checked;
    try {
      const item = await postJson(`/api/recordings/${badge.dataset.id}/captions/regenerate`, body);
      setBadge(badge, item);
      status.textContent = "Queued: the page reloads when the new captions are ready.";
      watchStatus(badge);
    } catch (error) {
      status.textContent = "Refused: " + error.message;
    }
  });
}

function watchStatus(badge) {
  const timer = setInterval(async () => {
    const response = await fetch(`/api/recordings/${badge.dataset.id}/captions/status`, { credentials: "same-origin" });
    if (!response.ok) return;
    const item = await response.json();
    setBadge(badge, item);
    if (item.status === "ready") { clearInterval(timer); location.reload(); }
    if (item.status === "failed") clearInterval(timer);
  }, 1000);
}

function initPlayer() {
  const badge = document.getElementById("player-status");
  const player = document.getElementById("player");
  const box = document.getElementById("transcript");
  initRegenerate(badge);
  if (badge.dataset.status === "ready") {
    loadTranscript(box, player);
    return;
  }
  if (badge.dataset.status !== "failed") watchStatus(badge);
}

// -- Calls --------------------------------------------------------------------------------------

function initCall() {
  const state = document.getElementById("call-state");
  if (state.dataset.live !== "yes") return;  // a finished call's captions come with the page
  const partial = document.getElementById("partial-speaker");
  const latency = document.getElementById("latency");
  const latest = {};
  const source = new EventSource(`/api/calls/${state.dataset.call}/events`);
  source.addEventListener("started", (event) => {
    const call = JSON.parse(event.data);
    document.getElementById("speaker-language").textContent = call.speaker_language;
    document.getElementById("listener-language").textContent = call.listener_language;
    state.textContent = "Live";
  });
  source.addEventListener("caption", (event) => {
    const caption = JSON.parse(event.data);
    if (!caption.final) {
      partial.textContent = caption.text;
      return;
    }
    const list = document.getElementById(caption.role === "speaker" ? "captions-speaker" : "captions-translation");
    const item = document.createElement("li");
    item.textContent = caption.text;
    item.dataset.latency = caption.latency_s;
    list.append(item);
    if (caption.role === "speaker") partial.textContent = "";
    latest[caption.language] = caption.latency_s;
    latency.textContent = Object.entries(latest)
      .map(([language, seconds]) => language + " " + seconds.toFixed(2) + " s").join(" · ");
  });
  source.addEventListener("ended", (event) => {
    const call = JSON.parse(event.data);
    state.textContent = "Ended (" + (call.reason || "") + ")";
    source.close();
  });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) state.textContent += " · disconnected"; };
}

function initCalls() {
  setInterval(async () => {
    const response = await fetch("/api/calls", { credentials: "same-origin" });
    if (!response.ok) return;
    const calls = await response.json();
    const list = document.getElementById("live-calls");
    const shown = [...list.querySelectorAll("a")].map((a) => a.getAttribute("href")).join();
    const wanted = calls.live.map((call) => "/calls/" + call.id).join();
    if (shown === wanted) return;
    list.replaceChildren();
    for (const call of calls.live) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "/calls/" + call.id;
      link.textContent = `Call ${call.id} with ${call.peer} (${call.speaker_language} → ${call.listener_language})`;
      item.append(link);
      list.append(item);
    }
    if (!calls.live.length) list.innerHTML = '<li class="muted">No call right now.</li>';
  }, 2000);
}

// -- Node ---------------------------------------------------------------------------------------

function initNode() {
  const status = document.getElementById("trust-status");
  for (const button of document.querySelectorAll("button.trust-action")) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      try {
        const peer = await postJson(`/api/peers/${button.dataset.peer}/${action}`);
        const row = button.closest("tr");
        row.querySelector(".trust").textContent = peer.trust;
        const next = peer.trust === "trusted" ? "untrust" : "trust";
        button.dataset.action = next;
        button.textContent = (next === "trust" ? "Trust " : "Untrust ") + (peer.name || peer.id.slice(0, 8));
        status.textContent = (peer.name || peer.id.slice(0, 8)) + " is now " + peer.trust + ".";
      } catch (error) {
        status.textContent = "Could not " + action + ": " + error.message;
      }
    });
  }
}

const pages = { recordings: initRecordings, player: initPlayer, call: initCall, calls: initCalls, node: initNode };
document.addEventListener("DOMContentLoaded", () => {
  const init = pages[document.body.dataset.page];
  if (init) init();
});
