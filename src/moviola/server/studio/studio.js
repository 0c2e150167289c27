// Moviola studio: a thin client of the same /v1 API the openai SDK uses. No build step, no dependencies.
// The key lives in localStorage; every request sends it as a Bearer token. Videos are fetched with the
// key and played from blob: URLs (a <video src> cannot carry an Authorization header).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { key: localStorage.getItem("moviola.key") || "", polling: new Map(), blobs: new Map() };

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  const res = await fetch("/v1" + path, Object.assign({}, opts, { headers }));
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return res;
}

// --- sign in --------------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  const models = await (await api("/models")).json();
  localStorage.setItem("moviola.key", key);
  const m = models.data[0];
  const sizes = ["64x64", "96x64", "64x96", "112x64", "64x112", "128x128"].filter((s) => m.moviola.sizes.includes(s));
  $("#size").innerHTML = sizes.map((s) => `<option>${s}</option>`).join("");
  $("#seconds").max = m.moviola.max_seconds;
  $("#who-name").textContent = m.id + " · key " + key.slice(0, 8) + "…";
  $("#signin-panel").hidden = true;
  $("#studio").hidden = false;
  $("#who").hidden = false;
  await loadGallery();
}

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  try {
    await signIn($("#key").value.trim());
  } catch (e) {
    state.key = "";
    $("#signin-error").textContent = e.status === 401 ? "That key is not valid (or was revoked)." : e.message;
  }
});

$("#signout").addEventListener("click", () => {
  localStorage.removeItem("moviola.key");
  location.reload();
});

// --- creating -------------------------------------------------------------------------------------

$("#create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#create-error").textContent = "";
  const form = new FormData();
  form.append("prompt", $("#prompt").value);
  form.append("size", $("#size").value);
  form.append("seconds", String($("#seconds").value));
  if ($("#seed").value !== "") form.append("seed", $("#seed").value);
  const img = $("#image").files[0];
  if (img) form.append("input_reference", img, img.name);
  await submit(() => api("/videos", { method: "POST", body: form }));
});

async function submit(request) {
  const btn = $("#generate");
  btn.disabled = true;
  try {
    const video = await (await request()).json();
    upsertCard(video, true);
    $("#empty").hidden = true;
    poll(video.id);
  } catch (e) {
    $("#create-error").textContent = e.message;
  } finally {
    btn.disabled = false;
  }
}

// --- the gallery ----------------------------------------------------------------------------------

async function loadGallery() {
  const list = await (await api("/videos?limit=100&order=desc")).json();
  $("#gallery").innerHTML = "";
  for (const v of list.data) {
    upsertCard(v, false);
    if (v.status === "queued" || v.status === "in_progress") poll(v.id);
  }
  $("#empty").hidden = list.data.length > 0;
}

function upsertCard(v, prepend) {
  let card = $(`.card[data-id="${v.id}"]`);
  if (!card) {
    card = $("#card-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = v.id;
    wireCard(card);
    if (prepend) $("#gallery").prepend(card); else $("#gallery").append(card);
  }
  card.dataset.status = v.status;
  card.querySelector("progress").value = v.progress;
  card.querySelector(".prompt").textContent = v.prompt || "";
  const kind = v.moviola && v.moviola.kind !== "create" ? v.moviola.kind + " · " : "";
  card.querySelector(".meta").textContent =
    `${kind}${v.size} · ${v.seconds} s · seed ${v.moviola ? v.moviola.seed : "?"} · ${v.status}` +
    (v.status === "in_progress" ? ` ${v.progress}%` : "");
  const note = v.error ? v.error.message : (v.moviola && v.moviola.note) || "";
  card.querySelector(".note").textContent = note;
  const [w, h] = v.size.split("x").map(Number);
  card.querySelector(".media").style.aspectRatio = `${w} / ${h}`;
  if (v.status === "completed" || v.status === "failed") card.classList.add("done");
  if (v.status === "failed") card.querySelector(".placeholder").textContent = "failed";
  if (v.status === "in_progress") card.querySelector(".placeholder").textContent = `${v.progress}%`;
  if (v.status === "completed" && !card.querySelector("video") && !(v.moviola && v.moviola.expired)) showVideo(card, v.id);
  const fb = v.moviola && v.moviola.feedback;
  if (fb) {
    card.querySelector('[name="rating"]').value = fb.rating == null ? "" : String(fb.rating);
    card.querySelector('[name="comment"]').value = fb.comment || "";
  }
}

async function showVideo(card, id) {
  try {
    const blob = await (await api(`/videos/${id}/content`)).blob();
    const url = URL.createObjectURL(blob);
    state.blobs.set(id, url);
    const video = document.createElement("video");
    Object.assign(video, { src: url, controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
    const media = card.querySelector(".media");
    media.innerHTML = "";
    media.append(video);
    const a = card.querySelector("a.download");
    a.href = url;
    a.download = id + ".mp4";
  } catch (e) {
    card.querySelector(".note").textContent = e.message;
  }
}

function poll(id) {
  if (state.polling.has(id)) return;
  const tick = async () => {
    try {
      const res = await api(`/videos/${id}`);
      const v = await res.json();
      upsertCard(v, false);
      if (v.status === "queued" || v.status === "in_progress") {
        const wait = Number(res.headers.get("openai-poll-after-ms")) || 1000;
        state.polling.set(id, setTimeout(tick, wait));
        return;
      }
    } catch (e) { /* deleted or signed out */ }
    state.polling.delete(id);
  };
  state.polling.set(id, setTimeout(tick, 0));
}

function wireCard(card) {
  const id = () => card.dataset.id;
  card.querySelector('[data-act="remix"]').addEventListener("click", async () => {
    const prompt = window.prompt("Remix with a new prompt:", card.querySelector(".prompt").textContent);
    if (!prompt) return;
    await submit(() => api(`/videos/${id()}/remix`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt }) }));
  });
  card.querySelector('[data-act="extend"]').addEventListener("click", async () => {
    const prompt = window.prompt("Extend with what happens next:", card.querySelector(".prompt").textContent);
    if (!prompt) return;
    const form = new FormData();
    form.append("prompt", prompt);
    form.append("seconds", "2");
    form.append("video[id]", id());
    await submit(() => api("/videos/extensions", { method: "POST", body: form }));
  });
  card.querySelector('[data-act="delete"]').addEventListener("click", async () => {
    if (!window.confirm("Delete this video and its files?")) return;
    try { await api(`/videos/${id()}`, { method: "DELETE" }); } catch (e) { /* already gone */ }
    const url = state.blobs.get(id());
    if (url) URL.revokeObjectURL(url);
    card.remove();
    $("#empty").hidden = $("#gallery").children.length > 0;
  });
  card.querySelector(".feedback").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const rating = f.rating.value === "" ? null : Number(f.rating.value);
    const btn = f.querySelector("button");
    try {
      await api(`/videos/${id()}/feedback`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ rating, comment: f.comment.value }) });
      btn.textContent = "Saved";
    } catch (e) {
      btn.textContent = "Error";
      card.querySelector(".note").textContent = e.message;
    }
    setTimeout(() => { btn.textContent = "Save"; }, 1500);
  });
}

$("#export").addEventListener("click", async () => {
  const data = await (await api("/feedback")).json();
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: "moviola-feedback.json" });
  document.body.append(a);
  a.click();
  a.remove();
});

if (state.key) signIn(state.key).catch(() => { localStorage.removeItem("moviola.key"); state.key = ""; });
