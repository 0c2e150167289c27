// Moviola studio: a thin client of the same /v1 API the openai SDK uses. No build step, no dependencies.
// The key lives in localStorage; every request sends it as a Bearer token. Videos are fetched with the
// key and played from blob: URLs (a <video src> cannot carry an Authorization header).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { key: localStorage.getItem("moviola.key") || "", polling: new Map(), blobs: new Map() };

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  let res;
  try {
    res = await fetch("/v1" + path, Object.assign({}, opts, { headers }));
  } catch (e) {  // no answer at all (the server is down), or a key the browser cannot send
    const err = new Error(/ISO-8859-1|Headers/.test(e.message) ? "A key has only plain ASCII characters: check what was pasted."
      : "The server cannot be reached: is moviola serve running? (retrying where it can)");
    err.status = 0;
    throw err;
  }
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
  $("#size").innerHTML = $("#board-size").innerHTML = sizes.map((s) => `<option>${s}</option>`).join("");
  state.maxSeconds = m.moviola.max_seconds;
  state.abilities = m.moviola.abilities || [];
  $("#seconds").max = $("#board-seconds").max = m.moviola.max_seconds;
  const i2v = state.abilities.includes("image_to_video");
  $("#image").disabled = !i2v;
  $("#image-note").hidden = i2v;
  $("#image-note").textContent = i2v ? "" : "This model was not trained with known frames: no image-to-video, extend or continue.";
  $("#own-form").hidden = !state.abilities.includes("extend");  // edit and extend both need known frames
  if (!$("#board-cards").children.length) { addBoardCard(0, ""); addBoardCard(2, ""); }
  $("#who-name").textContent = m.id + " · key " + key.slice(0, 8) + "…";
  $("#signin-panel").hidden = true;
  $("#studio").hidden = false;
  $("#who").hidden = false;
  try {
    await loadGallery();
  } catch (e) {  // signed in, but the list did not load: say so where the gallery is, keep the key
    $("#empty").hidden = false;
    $("#empty").textContent = "Could not load your videos: " + e.message;
  }
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
  await submit(() => api("/videos", { method: "POST", body: form }), $("#generate"), $("#create-error"));
});

// A clip of the artist's own: edit it (video to video) or extend it, through the same endpoints as the SDK's.
$("#own-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("#own-video").files[0], action = $("#own-action").value;
  const form = new FormData();
  form.append("prompt", $("#own-prompt").value);
  form.append("video", file, file.name);
  if (action !== "edit") {
    form.append("seconds", String($("#own-seconds").value));
    if (action === "before") form.append("backward", "true");
  }
  const path = action === "edit" ? "/videos/edits" : "/videos/extensions";
  await submit(() => api(path, { method: "POST", body: form }), $("#own-submit"), $("#own-error"));
});
$("#own-action").addEventListener("change", () => { $("#own-seconds").disabled = $("#own-action").value === "edit"; });

// The first frame's preview: what image-to-video will start from (the server crops it to the size).
$("#image").addEventListener("change", () => {
  const f = $("#image").files[0];
  const img = $("#image-preview img");
  if (img.src) URL.revokeObjectURL(img.src);
  $("#image-preview").hidden = !f;
  if (f) img.src = URL.createObjectURL(f); else img.removeAttribute("src");
});
$("#image-clear").addEventListener("click", () => {
  $("#image").value = "";
  $("#image").dispatchEvent(new Event("change"));
});

// Queue a job, show its card at the top of the gallery and follow it. Returns true if it was queued.
async function submit(request, btn, errorBox) {
  btn.disabled = true;
  errorBox.textContent = "";
  try {
    const video = await (await request()).json();
    upsertCard(video, true);
    $("#empty").hidden = true;
    // Show the new card (its progress, then its clip): on a phone the gallery is below the forms.
    $(`.card[data-id="${video.id}"]`).scrollIntoView({ block: "nearest" });
    poll(video.id);
    return true;
  } catch (e) {
    errorBox.textContent = e.message;
    return false;
  } finally {
    btn.disabled = false;
  }
}

// --- the storyboard editor ------------------------------------------------------------------------

function addBoardCard(start, prompt) {
  const li = $("#board-card-template").content.firstElementChild.cloneNode(true);
  li.querySelector('[name="start"]').value = String(start);
  li.querySelector('[name="prompt"]').value = prompt;
  li.querySelector('[data-act="remove"]').addEventListener("click", () => {
    if ($("#board-cards").children.length > 1) li.remove();
    boardChanged();
  });
  // Moving a card moves its prompt to the neighbouring slot; the start times stay where they are (in order).
  const swap = (other) => {
    if (!other) return;
    const a = li.querySelector('[name="prompt"]'), b = other.querySelector('[name="prompt"]');
    [a.value, b.value] = [b.value, a.value];
    const fa = li.querySelector('[name="image"]'), fb = other.querySelector('[name="image"]');
    [fa.files, fb.files] = [fb.files, fa.files];  // a card's image moves with its prompt
    b.focus();
  };
  li.querySelector('[data-act="up"]').addEventListener("click", () => swap(li.previousElementSibling));
  li.querySelector('[data-act="down"]').addEventListener("click", () => swap(li.nextElementSibling));
  li.querySelector('[name="start"]').addEventListener("change", boardChanged);
  li.querySelector('[name="image"]').disabled = !(state.abilities || []).includes("image_to_video");
  $("#board-cards").append(li);
  boardChanged();
  return li;
}

function boardCards() {
  return [...$("#board-cards").children].map((li) => ({
    start: Number(li.querySelector('[name="start"]').value),
    prompt: li.querySelector('[name="prompt"]').value.trim(),
  }));
}

const dataURL = (file) => new Promise((resolve, reject) => {
  const r = new FileReader();
  r.onload = () => resolve(r.result);
  r.onerror = () => reject(new Error(`cannot read ${file.name}`));
  r.readAsDataURL(file);
});

// The cards as the API takes them: an image card carries its picture as a data: URL (its first frame).
async function boardCardsWithImages() {
  const cards = boardCards();
  const lis = [...$("#board-cards").children];
  for (let i = 0; i < cards.length; i++) {
    const f = lis[i].querySelector('[name="image"]').files[0];
    if (f) cards[i].image = await dataURL(f);
  }
  return cards;
}

function boardChanged() {
  const cards = boardCards();
  const last = cards.length ? cards[cards.length - 1].start : 0;
  const total = $("#board-seconds");
  if (Number(total.value) <= last) total.value = String(Math.min(last + 2, Number(total.max) || last + 2));
  $("#board-cards").firstElementChild.querySelector('[name="start"]').readOnly = true;  // the first starts at 0
}

$("#board-add").addEventListener("click", () => {
  const cards = boardCards();
  const start = cards.length ? cards[cards.length - 1].start + 2 : 0;
  addBoardCard(start, "").querySelector('[name="prompt"]').focus();
});

$("#board-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = { cards: await boardCardsWithImages(), seconds: String($("#board-seconds").value), size: $("#board-size").value,
                 transition: $("#board-transition").value };
  if ($("#board-seed").value !== "") body.seed = Number($("#board-seed").value);  // its own: New video's is another clip's
  await submit(() => api("/videos/storyboards", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }),
  $("#board-submit"), $("#board-error"));
});

// --- the gallery ----------------------------------------------------------------------------------

const GALLERY_PAGE = 24;

// The newest page; "Older videos" follows the list's cursor (after=last_id) one page at a time.
async function loadGallery(after) {
  const q = `/videos?limit=${GALLERY_PAGE}&order=desc` + (after ? `&after=${encodeURIComponent(after)}` : "");
  const list = await (await api(q)).json();
  if (!after) $("#gallery").innerHTML = "";
  for (const v of list.data) {
    upsertCard(v, false);
    if (v.status === "queued" || v.status === "in_progress") poll(v.id);
  }
  if (!after) {
    $("#empty").textContent = "No videos yet.";
    $("#empty").hidden = list.data.length > 0;
  }
  state.galleryAfter = list.has_more ? list.last_id : null;
  $("#gallery-more").hidden = !list.has_more;
}

$("#gallery-more").addEventListener("click", () => {
  if (state.galleryAfter) loadGallery(state.galleryAfter).catch((e) => { window.alert("Could not load older videos: " + e.message); });
});

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
  const expired = v.status === "completed" && v.moviola && v.moviola.expired;
  if (v.status === "completed" || v.status === "failed") card.classList.add("done");
  card.classList.toggle("unusable", v.status === "failed" || Boolean(expired));  // nothing to play, remix or extend
  if (v.status === "failed") card.querySelector(".placeholder").textContent = "failed";
  if (expired) {
    card.querySelector(".placeholder").textContent = "expired";
    if (!v.error) card.querySelector(".note").textContent = "Expired: its files were deleted after the server's retention time.";
  }
  if (v.status === "in_progress") card.querySelector(".placeholder").textContent = `${v.progress}%`;
  if (v.status === "completed" && !card.querySelector("video") && !(v.moviola && v.moviola.expired)) watch(card);
  const fb = v.moviola && v.moviola.feedback;
  if (fb) {
    card.querySelector('[name="rating"]').value = fb.rating == null ? "" : String(fb.rating);
    card.querySelector('[name="comment"]').value = fb.comment || "";
  }
}

// A card's clip is fetched when the card comes near the screen, and plays only while it is on it: a gallery
// of 24 (and more pages) no longer downloads and decodes every clip at once.
const onScreen = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const e of entries) {
    const card = e.target, video = card.querySelector("video");
    if (!e.isIntersecting) {
      if (video) video.pause();
    } else if (!video) {
      if (!card.dataset.loading) { card.dataset.loading = "1"; showVideo(card, card.dataset.id); }
    } else {
      video.play().catch(() => {});  // a browser may refuse autoplay: the controls are there
    }
  }
}, { rootMargin: "200px" }) : null;

function watch(card) {
  if (onScreen) onScreen.observe(card);
  else showVideo(card, card.dataset.id);
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
    delete card.dataset.loading;  // fetched again when it next comes into view
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
    } catch (e) {
      const card = $(`.card[data-id="${id}"]`);
      if (e.status !== 404 && e.status !== 401 && card) {  // the server is down or busy: say so and keep asking
        card.querySelector(".note").textContent = e.message;
        state.polling.set(id, setTimeout(tick, 5000));
        return;
      }
      if (card && e.status === 401) card.querySelector(".note").textContent = e.message;
    }
    state.polling.delete(id);
  };
  state.polling.set(id, setTimeout(tick, 0));
}

function wireCard(card) {
  const id = () => card.dataset.id;
  const remixForm = card.querySelector(".remix-form"), extendForm = card.querySelector(".extend-form");
  const open = (form) => {
    for (const f of [remixForm, extendForm]) f.hidden = f !== form || !f.hidden;
    if (!form.hidden) {
      const text = card.querySelector(".prompt").textContent;  // a storyboard's is "0s: a | 2s: b": start from its first card
      form.prompt.value = /^\d+(\.\d+)?s: /.test(text) ? text.split(" | ")[0].replace(/^\d+(\.\d+)?s: /, "") : text;
      form.prompt.focus();
    }
  };
  card.querySelector('[data-act="remix"]').addEventListener("click", () => open(remixForm));
  card.querySelector('[data-act="extend"]').addEventListener("click", () => open(extendForm));
  card.querySelector('[data-act="extend"]').hidden = !(state.abilities || []).includes("extend");
  for (const f of [remixForm, extendForm]) f.querySelector('[data-act="cancel"]').addEventListener("click", () => { f.hidden = true; });
  remixForm.strength.addEventListener("input", () => { remixForm.shown.value = remixForm.strength.value; });
  remixForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { prompt: remixForm.prompt.value, strength: Number(remixForm.strength.value) };
    const ok = await submit(() => api(`/videos/${id()}/remix`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }),
    remixForm.querySelector('button[type="submit"]'), card.querySelector(".note"));
    if (ok) remixForm.hidden = true;
  });
  extendForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData();
    form.append("prompt", extendForm.prompt.value);
    form.append("seconds", String(extendForm.seconds.value));
    form.append("video[id]", id());
    if (extendForm.backward.checked) form.append("backward", "true");
    const ok = await submit(() => api("/videos/extensions", { method: "POST", body: form }),
      extendForm.querySelector('button[type="submit"]'), card.querySelector(".note"));
    if (ok) extendForm.hidden = true;
  });
  card.querySelector('[data-act="delete"]').addEventListener("click", async () => {
    if (!window.confirm("Delete this video and its files?")) return;
    try {
      await api(`/videos/${id()}`, { method: "DELETE" });
    } catch (e) {
      if (e.status !== 404) {  // refused or unreachable: it is still there
        card.querySelector(".note").textContent = "Not deleted: " + e.message;
        return;
      }
    }
    const url = state.blobs.get(id());
    if (url) URL.revokeObjectURL(url);
    card.remove();
    if (!$("#gallery").children.length && state.galleryAfter) {  // the page is empty but older videos remain
      loadGallery(state.galleryAfter).catch((e) => { $("#empty").hidden = false; $("#empty").textContent = e.message; });
    } else {
      $("#empty").hidden = $("#gallery").children.length > 0;
    }
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
  let data;
  try {
    data = await (await api("/feedback")).json();
  } catch (e) {
    window.alert("Could not export feedback: " + e.message);
    return;
  }
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: "moviola-feedback.json" });
  document.body.append(a);
  a.click();
  a.remove();
});

if (state.key) {
  signIn(state.key).catch((e) => {
    if (e.status === 401) localStorage.removeItem("moviola.key");  // revoked or wrong: forget it
    else $("#key").value = state.key;  // the server is down or busy: keep it, one click signs in again
    state.key = "";
    $("#signin-error").textContent = e.status === 401 ? "Your saved key is no longer valid: " + e.message : e.message;
  });
}
