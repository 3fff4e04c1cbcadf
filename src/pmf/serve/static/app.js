// The page of `pmf serve`: reads GET /info, sends POST /generate (format json), shows the images.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, cls: 0, steps: 1, seq: 0, shown: 0, history: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("pmf-token");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function fmt(x) { return Number(x).toFixed(2).replace(/\.?0+$/, "") || "0"; }

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function loadInfo() {
  const res = await fetch("/info", { headers: headers() });
  if (res.status === 401) {
    $("token-box").hidden = false;
    $("model").textContent = "this server needs an access token";
    return;
  }
  const info = await res.json();
  state.info = info;
  $("token-box").hidden = sessionStorage.getItem("pmf-token") === null;
  $("model").textContent = `${info.preset || "model"} · ${info.image_size}×${info.image_size} px · ` +
    `${info.num_classes} classes` + (info.ema ? ` · EMA ${info.ema}` : "");
  $("omega").max = info.limits.omega_slider_max;
  $("count").max = info.limits.max_images;
  const twoSteps = document.querySelector('#steps [data-steps="2"]');
  twoSteps.disabled = info.limits.max_steps < 2;
  // an ONNX file holds one step count: min_steps = max_steps
  document.querySelector('#steps [data-steps="1"]').disabled = (info.limits.min_steps || 1) > 1;
  resetDefaults(false);
  renderClasses();
}

function resetDefaults(go = true) {
  const d = state.info.defaults;
  $("omega").value = d.omega;
  $("t-min").value = d.t_min;
  $("t-max").value = d.t_max;
  setSteps(Math.min(d.steps, 2), false);
  updateOutputs();
  if (go) generate();
}

function updateOutputs() {
  $("omega-out").textContent = "ω = " + fmt($("omega").value);
  $("interval-out").textContent = `[${fmt($("t-min").value)}, ${fmt($("t-max").value)}]`;
  const name = state.info ? state.info.classes[state.cls] : "";
  $("class-picked").textContent = name === String(state.cls) ? name : `${state.cls} · ${name}`;
}

function renderClasses() {
  const query = $("class-search").value.trim().toLowerCase();
  const list = $("class-list");
  list.replaceChildren();
  let shown = 0;
  state.info.classes.forEach((name, i) => {
    if (query && !name.toLowerCase().includes(query) && String(i) !== query) return;
    if (shown++ >= 200) return;  // a long list stays fast; searching narrows it
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = name === String(i) ? name : `${name}`;
    b.title = `class ${i}`;
    b.dataset.cls = i;
    b.setAttribute("role", "option");
    if (i === state.cls) b.classList.add("on");
    b.onclick = () => { state.cls = i; renderClasses(); updateOutputs(); changed(); };
    list.appendChild(b);
  });
  if (!shown) {
    const none = document.createElement("span");
    none.className = "none";
    none.textContent = "no class matches";
    list.appendChild(none);
  }
}

function setSteps(n, go = true) {
  state.steps = n;
  document.querySelectorAll("#steps button").forEach((b) => b.classList.toggle("on", +b.dataset.steps === n));
  if (go) changed();
}

let timer = null;
function changed() {
  updateOutputs();
  if (!$("auto").checked) return;
  clearTimeout(timer);
  timer = setTimeout(generate, 90);
}

async function generate() {
  if (!state.info) return;
  const count = Math.max(1, Math.min(+$("count").value || 1, state.info.limits.max_images));
  const body = {
    classes: Array(count).fill(state.cls), seed: Math.max(0, Math.floor(+$("seed").value || 0)),
    omega: +$("omega").value, t_min: +$("t-min").value, t_max: +$("t-max").value, steps: state.steps,
    format: "json",
  };
  const seq = ++state.seq;
  $("images").classList.add("stale");
  $("status").innerHTML = '<span class="busy">generating…</span>';
  const t0 = performance.now();
  let res, data;
  try {
    res = await fetch("/generate", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    data = await res.json();
  } catch (err) {
    if (seq === state.seq) { showError("the server did not answer: " + err); $("status").textContent = ""; }
    return;
  }
  const ms = performance.now() - t0;
  if (seq < state.shown) return;  // an older request came back after a newer one
  state.shown = seq;
  if (!res.ok) {
    if (res.status === 401) $("token-box").hidden = false;
    showError(data.detail || res.statusText);
    $("status").textContent = "";
    $("images").classList.remove("stale");
    return;
  }
  showError("");
  render(data, ms);
}

function render(data, ms) {
  const s = data.settings;
  const box = $("images");
  box.replaceChildren();
  data.images.forEach((im) => {
    const fig = document.createElement("figure");
    fig.dataset.label = im.label;
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + im.png;
    img.alt = `class ${im.label} (${im.class_name}), image ${im.index}`;
    const cap = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = im.class_name === String(im.label) ? im.class_name : `${im.label} · ${im.class_name}`;
    const link = document.createElement("a");
    link.href = img.src;
    link.download = `pmf_class${im.label}_seed${s.seed}_${im.index}.png`;
    link.textContent = "download";
    cap.append(name, link);
    fig.append(img, cap);
    box.appendChild(fig);
  });
  box.classList.remove("stale");
  const line = `${data.images.length} image${data.images.length > 1 ? "s" : ""} in <b>${ms.toFixed(0)} ms</b> ` +
    `(server ${data.time_ms.toFixed(1)} ms) · seed ${s.seed} · ω ${fmt(s.omega)} · ` +
    `[${fmt(s.t_min)}, ${fmt(s.t_max)}] · ${s.steps} step${s.steps > 1 ? "s" : ""}`;
  $("status").innerHTML = line;
  $("status").dataset.ms = ms.toFixed(1);
  state.history.unshift(`${ms.toFixed(0)} ms · ${data.images.length} × class ${data.images[0].label} · ` +
    `seed ${s.seed} · ω ${fmt(s.omega)}`);
  state.history.length = Math.min(state.history.length, 10);
  $("history").replaceChildren(...state.history.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
}

function wire() {
  $("class-search").addEventListener("input", () => {
    renderClasses();
    const first = $("class-list").querySelector("button");
    const visible = [...$("class-list").querySelectorAll("button")];
    if (visible.length === 1 && first) { state.cls = +first.dataset.cls; renderClasses(); changed(); }
  });
  $("class-search").addEventListener("keydown", (e) => {
    const first = $("class-list").querySelector("button");
    if (e.key === "Enter" && first) { first.click(); }
  });
  $("omega").addEventListener("input", changed);
  $("t-min").addEventListener("input", () => {
    if (+$("t-min").value > +$("t-max").value) $("t-max").value = $("t-min").value;
    changed();
  });
  $("t-max").addEventListener("input", () => {
    if (+$("t-max").value < +$("t-min").value) $("t-min").value = $("t-max").value;
    changed();
  });
  $("count").addEventListener("change", changed);
  $("seed").addEventListener("change", changed);
  $("new-seed").onclick = () => { $("seed").value = Math.floor(Math.random() * 1e9); clearTimeout(timer); generate(); };
  document.querySelectorAll("#steps button").forEach((b) => { b.onclick = () => setSteps(+b.dataset.steps); });
  $("generate").onclick = generate;
  $("reset").onclick = () => resetDefaults(true);
  $("token").addEventListener("change", () => { sessionStorage.setItem("pmf-token", $("token").value); loadInfo(); });
}

wire();
loadInfo().then(() => { if (state.info) generate(); })
  .catch((err) => showError("could not read /info: " + err));
