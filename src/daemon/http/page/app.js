// The operator's page: plain DOM, no framework, nothing fetched from
// elsewhere. Data comes from /api (docs/HTTP.md); live changes from the
// event stream /api/events. Text from the box is set with textContent only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), bad ? 8000 : 3000);
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  };
  const r = await fetch(path, init);
  if (r.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const j = await r.json().catch(() => ({}));
  if (!r.ok || j.ok === false) {
    throw new Error((j.error && j.error.message) || `${path}: HTTP ${r.status}`);
  }
  return j;
}

const time = (ms) => new Date(ms).toLocaleTimeString();
const score = (s) => (typeof s === "number" ? s.toFixed(2) : "");
const summary = (a) => {
  if (!a.ok) return `${a.error.code}: ${a.error.message}`;
  if (!a.results.length) return "nothing recognised";
  return a.results.map((r) => `${r.rec_docs} ${score(r.rec_scores)}`).join(", ");
};

// ---- status ----
async function refreshStatus() {
  try {
    const s = await api("/api/status");
    const v = s.versions || {};
    $("#box").textContent = `${v.device_id || ""}${v.line ? " · line " + v.line : ""}`;
    const st = $("#status");
    st.replaceChildren(
      el("span", { text: `v${v.shitud} · ${v.provider} · gallery ${v.gallery_items} items · broker ${s.broker.address} ` }),
      el("b", { class: s.broker.connected ? "ok" : "bad", text: s.broker.connected ? "connected" : "not connected" }),
    );
    for (const [name, h] of Object.entries(s.sources || {})) {
      const cls = h.state === "streaming" ? "ok" : h.state === "failed" ? "bad" : "warn";
      st.append(el("span", { text: ` · ${name} ` }), el("b", { class: cls, text: h.state }));
      const card = cameras.get(name);
      if (card) card.state.textContent = h.state + (h.last_error && h.state !== "streaming" ? `: ${h.last_error}` : "");
    }
  } catch (e) {
    $("#status").textContent = `status: ${e.message}`;
  }
}

// ---- cameras ----
const cameras = new Map(); // name -> {img, overlay, caption, state, answers: Map(seq -> answer), busy}

function cameraCard(name) {
  const img = el("img", { alt: `last answered frame of ${name}` });
  const overlay = svg("svg", { preserveAspectRatio: "none" });
  const caption = el("span", { text: "no answer yet" });
  const state = el("span", { text: "" });
  const card = el("div", { class: "camera", "data-source": name },
    el("div", { class: "view" }, img, overlay),
    el("div", { class: "caption" }, el("b", { text: name }), caption, state));
  const c = { img, overlay, caption, state, answers: new Map(), busy: false, want: 0, shown: 0 };
  cameras.set(name, c);
  return card;
}

// Loads the source's last answered frame and draws the answer it was
// computed on (the server names it in x-answer-seq), never another's boxes.
async function showFrame(name) {
  const c = cameras.get(name);
  if (!c || c.busy) return;
  c.busy = true;
  try {
    const r = await fetch(`/api/sources/${encodeURIComponent(name)}/frame.jpg`);
    if (!r.ok) return;
    const seq = Number(r.headers.get("x-answer-seq") || 0);
    const url = URL.createObjectURL(await r.blob());
    await new Promise((ok) => { c.img.onload = ok; c.img.onerror = ok; c.img.src = url; });
    if (c.url) URL.revokeObjectURL(c.url);
    c.url = url;
    draw(c, c.answers.get(seq), c.img.naturalWidth, c.img.naturalHeight);
  } finally {
    c.busy = false;
    if (c.want > c.shown) { c.shown = c.want; showFrame(name); }
  }
}

function draw(c, a, w, h) {
  c.overlay.setAttribute("viewBox", `0 0 ${w} ${h}`);
  c.overlay.replaceChildren();
  if (!a) return;
  const label = (x, y, text) => {
    const t = svg("text", { x: x + 4, y: Math.max(y - 6, 20) });
    t.textContent = text;
    c.overlay.append(t);
  };
  for (const r of a.results) {
    const [x1, y1, x2, y2] = r.bbox;
    c.overlay.append(svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1 }));
    label(x1, y1, `${r.rec_docs} ${score(r.rec_scores)}`);
  }
  // Crops that matched nothing well enough (kept as unknown items).
  for (const u of a.unknown || []) {
    const [x1, y1, x2, y2] = u.bbox;
    c.overlay.append(svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: "unknown" }));
    label(x1, y1, "unknown");
  }
  c.caption.textContent = `${time(a.at_ms)} · ${a.input} · ${summary(a)}` +
    (a.unknown && a.unknown.length ? ` · ${a.unknown.length} unknown` : "");
}

function onAnswer(a) {
  if (a.listed) addAnswerRow(a, true);
  if (!a.source || !a.ok) return;
  const c = cameras.get(a.source);
  if (!c) return;
  c.answers.set(a.seq, a);
  while (c.answers.size > 50) c.answers.delete(c.answers.keys().next().value);
  c.want = a.seq;
  if (!c.busy) { c.shown = a.seq; showFrame(a.source); }
}

async function loadSources() {
  const s = await api("/api/sources");
  const names = Object.keys(s);
  if (!names.length) return;
  const box = $("#cameras");
  box.replaceChildren();
  for (const name of names) {
    box.append(cameraCard(name));
    const last = s[name].last_answer;
    if (last) cameras.get(name).answers.set(last.seq, last);
    showFrame(name);
  }
}

// ---- answers ----
function addAnswerRow(a, first) {
  const tbody = $("#answers tbody");
  const row = el("tr", {},
    el("td", { text: time(a.at_ms) }),
    el("td", { text: a.source ? `${a.input} ${a.source}` : a.input }),
    el("td", { text: a.request_id }),
    el("td", { class: a.ok ? "" : "err", text: summary(a) }));
  if (first) tbody.prepend(row); else tbody.append(row);
  while (tbody.rows.length > 50) tbody.deleteRow(-1);
}

async function loadAnswers() {
  const list = await api("/api/answers?n=50");
  $("#answers tbody").replaceChildren();
  for (const a of list) addAnswerRow(a, false);
}

// ---- unknown items ----
async function loadUnknown() {
  const items = await api("/api/unknown");
  $("#unknown-count").textContent = items.length ? `(${items.length})` : "";
  const box = $("#unknown");
  if (!items.length) { box.replaceChildren(el("p", { class: "empty", text: "None." })); return; }
  box.replaceChildren(...items.map(unknownTile));
}

function unknownTile(u) {
  // Left empty on purpose: a pre-filled guess is one tap from a wrong enrolment.
  // The closest labels are offered first, then every label in the gallery.
  const list = el("datalist", { id: `labels-${u.unknown_id}` },
    ...(u.top_k || []).map(([l]) => el("option", { value: l })),
    ...[...$("#labels").options].map((o) => el("option", { value: o.value })));
  const input = el("input", { name: "label", list: list.id, placeholder: "label", "aria-label": `label for ${u.unknown_id}`, autocomplete: "off" });
  const form = el("form", { class: "row enrol", onsubmit: async (ev) => {
    ev.preventDefault();
    const label = input.value.trim();
    if (!label) return;
    for (const b of tile.querySelectorAll("button")) b.disabled = true;
    try {
      const r = await api(`/api/unknown/${u.unknown_id}/enrol`, { label });
      toast(`enrolled as ${label} (item ${r.added.join(", ")})`);
      tile.remove();
      loadGallery();
    } catch (e) {
      toast(e.message, true);
      for (const b of tile.querySelectorAll("button")) b.disabled = false;
    }
  } }, input, el("button", { type: "submit", text: "Enrol" }));
  const drop = el("button", { class: "danger", type: "button", text: "Drop", onclick: async () => {
    try { await api(`/api/unknown/${u.unknown_id}/drop`, {}); tile.remove(); }
    catch (e) { toast(e.message, true); }
  } });
  const cands = (u.top_k || []).map(([l, s]) => `${l} ${score(s)}`).join(", ");
  const tile = el("div", { class: "tile", "data-unknown": u.unknown_id },
    el("img", { src: `/api/unknown/${u.unknown_id}/crop.png`, alt: "unknown item", loading: "lazy" }),
    el("div", { text: `${u.source} · ${time(u.captured_at_ms)}` }),
    el("div", { class: "cands", text: cands ? `closest: ${cands}` : "" }),
    list, form, drop);
  return tile;
}

// ---- gallery ----
async function loadGallery() {
  const label = $("#gallery-label").value.trim();
  const g = await api(`/api/gallery?limit=200&label=${encodeURIComponent(label)}`);
  $("#gallery-count").textContent = `(${g.matched}${g.matched > g.items.length ? ", newest " + g.items.length + " shown" : ""})`;
  const tbody = $("#gallery tbody");
  const thumb = (i) => {
    const img = el("img", { class: "thumb", src: `/api/gallery/${i.id}/thumb.jpg`, alt: "", loading: "lazy" });
    img.addEventListener("error", () => img.remove());
    return img;
  };
  tbody.replaceChildren(...g.items.map((i) => el("tr", { "data-item": i.id },
    el("td", {}, thumb(i)),
    el("td", { text: i.id }),
    el("td", { text: i.label }),
    el("td", { text: i.source }),
    el("td", { text: i.added_unix ? new Date(i.added_unix * 1000).toLocaleString() : "" }),
    el("td", {}, el("button", { class: "danger", type: "button", text: "Remove", onclick: async () => {
      if (!confirm(`Remove item ${i.id} (${i.label}) from the gallery?`)) return;
      try { await api("/api/gallery/remove", { ids: [i.id] }); toast(`removed ${i.id}`); loadGallery(); }
      catch (e) { toast(e.message, true); }
    } })))));
  if (!label) {
    const labels = [...new Set(g.items.map((i) => i.label))].sort();
    $("#labels").replaceChildren(...labels.map((l) => el("option", { value: l })));
  }
}

// ---- live ----
function follow() {
  const es = new EventSource("/api/events");
  es.addEventListener("answer", (e) => onAnswer(JSON.parse(e.data)));
  es.addEventListener("unknown", () => loadUnknown());
  es.addEventListener("changed", (e) => {
    loadUnknown(); loadGallery(); refreshStatus();
    // After falling behind, answers and frames may have been missed too.
    if (e.data === "all") { loadAnswers(); for (const name of cameras.keys()) showFrame(name); }
  });
  es.onerror = () => { /* EventSource reconnects by itself */ };
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#gallery-search").addEventListener("submit", (e) => { e.preventDefault(); loadGallery(); });
  await refreshStatus();
  setInterval(refreshStatus, 5000);
  for (const load of [loadSources, loadAnswers, loadGallery, loadUnknown]) {
    try { await load(); } catch (e) { toast(e.message, true); }
  }
  follow();
  document.body.dataset.ready = "1";
});
