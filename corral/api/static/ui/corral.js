// Corral's dashboard: the few actions htmx attributes cannot express (JSON bodies,
// uploads with progress, streamed chat). Every call goes to the same API the CLI
// uses, with the dashboard's header (the admin key rides in its HttpOnly cookie).
"use strict";

const corralHeader = () => ({[document.body.dataset.uiHeader]: "1"});

function corralSay(text, bad, box) {
  const status = box || document.getElementById("status");
  status.textContent = text;
  status.className = bad ? "bad" : "";
}

function corralErrorText(body, fallback) {
  if (body && body.error) {
    return typeof body.error === "string" ? body.error : body.error.message || fallback;
  }
  return fallback;
}

async function corralCall(method, url, body) {
  const init = {method, headers: corralHeader()};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const reply = await fetch(url, init);
  const text = await reply.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
  if (!reply.ok) { throw new Error(corralErrorText(parsed, text || reply.statusText)); }
  return parsed;
}

// htmx's after-request hook: say what happened, in the API's words when it failed.
function corralStatus(event, done, then) {
  if (event.detail.successful) {
    corralSay(done);
    if (then) { window.location.assign(then); }
  } else {
    let text = event.detail.xhr.responseText;
    try { text = corralErrorText(JSON.parse(text), text); } catch (e) { /* not JSON */ }
    corralSay(text || "The request failed.", true);
  }
}

async function corralAct(promise, done, then) {
  try {
    const body = await promise;
    corralSay(typeof done === "function" ? done(body) : done);
    if (then) { window.location.assign(then); }
    return body;
  } catch (error) {
    corralSay(String(error.message || error), true);
    return null;
  }
}

// --- models ------------------------------------------------------------------------------

function corralPull(form) {
  const request = {model: form.model.value.trim()};
  if (form.name.value.trim()) { request.name = form.name.value.trim(); }
  if (form.sha256 && form.sha256.value.trim()) { request.sha256 = form.sha256.value.trim(); }
  corralAct(corralCall("POST", "/admin/pulls", request),
    (job) => "Pulling " + job.ref + " as " + job.model + ".").then((job) => {
    if (job) { form.reset(); }
  });
}

function corralUpload(file, name) {
  const box = document.getElementById("upload-status");
  const url = "/admin/uploads/" + encodeURIComponent(file.name) +
    (name ? "?name=" + encodeURIComponent(name) : "");
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", url);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  for (const [key, value] of Object.entries(corralHeader())) { xhr.setRequestHeader(key, value); }
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      const percent = Math.floor(100 * e.loaded / e.total);
      corralSay("Uploading " + file.name + ": " + percent + "%", false, box);
      box.dataset.percent = String(percent);
    }
  };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    if (xhr.status === 201 && body) {
      box.dataset.sha256 = body.upload.sha256;
      corralSay("Added " + body.name + " (" + body.upload.size.toLocaleString() +
        " bytes, sha256 " + body.upload.sha256 + ").", false, box);
      document.body.dispatchEvent(new Event("corral-models-changed"));
    } else {
      corralSay(corralErrorText(body, xhr.responseText || "The upload failed."), true, box);
    }
  };
  xhr.onerror = () => corralSay("The upload was cut off.", true, box);
  xhr.send(file);
}

function corralDropZone(zone) {
  const input = zone.querySelector("input[type=file]");
  const nameOf = () => zone.querySelector("input[name=upload-name]").value.trim();
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) { corralUpload(e.dataTransfer.files[0], nameOf()); }
  });
  input.addEventListener("change", () => {
    if (input.files.length) { corralUpload(input.files[0], nameOf()); input.value = ""; }
  });
}

function corralCopy(form, model) {
  const destination = form.destination.value.trim();
  corralAct(corralCall("POST", "/admin/models/" + model + "/copy", {destination}),
    (m) => "Copied to " + m.name + ".");
}

function corralReload(form, model) {
  let params = {};
  try {
    params = form.params.value.trim() ? JSON.parse(form.params.value) : {};
  } catch (e) {
    corralSay("The parameters are not JSON: " + e.message, true);
    return;
  }
  corralAct(corralCall("POST", "/admin/models/" + model + "/reload", params),
    (r) => "Reloaded with " + JSON.stringify(r.params) + ".");
}

// --- batches -----------------------------------------------------------------------------

async function corralCreateBatch(form) {
  try {
    const upload = new FormData();
    upload.append("purpose", "batch");
    upload.append("file", form.file.files[0]);
    corralSay("Uploading...");
    const reply = await fetch("/v1/files", {method: "POST", body: upload, headers: corralHeader()});
    const file = await reply.json();
    if (!reply.ok) { throw new Error(corralErrorText(file, reply.statusText)); }
    const request = {input_file_id: file.id, endpoint: form.endpoint.value, completion_window: "24h"};
    const batch = await corralCall("POST", "/v1/batches", request);
    corralSay("Created " + batch.id + ".");
    form.reset();
  } catch (error) {
    corralSay(String(error.message || error), true);
  }
}

// --- playground --------------------------------------------------------------------------

// A chat answer streamed into the page as it arrives (OpenAI's SSE chunks), with the
// answer's tokens/s from the usage the last chunk carries.
async function corralChat(form) {
  const out = document.getElementById("answer");
  const stats = document.getElementById("answer-stats");
  out.textContent = "";
  stats.textContent = "";
  out.dataset.done = "false";
  const messages = [];
  if (form.system.value.trim()) { messages.push({role: "system", content: form.system.value}); }
  messages.push({role: "user", content: form.prompt.value});
  const request = {
    model: form.model.value, messages, stream: true,
    stream_options: {include_usage: true},
    temperature: Number(form.temperature.value),
    top_p: Number(form.top_p.value),
    max_tokens: Number(form.max_tokens.value),
  };
  if (form.json_mode.checked) {
    let schema;
    try { schema = JSON.parse(form.schema.value); } catch (e) {
      corralSay("The JSON schema is not JSON: " + e.message, true);
      return;
    }
    request.response_format = {type: "json_schema", json_schema: {name: "answer", schema}};
  }
  corralSay("");
  const started = performance.now();
  let first = null;
  let usage = null;
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST", body: JSON.stringify(request),
      headers: {...corralHeader(), "Content-Type": "application/json"},
    });
    if (!reply.ok) { throw new Error(corralErrorText(await reply.json(), reply.statusText)); }
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) { break; }
      pending += decoder.decode(value, {stream: true});
      const events = pending.split("\n\n");
      pending = events.pop();
      for (const event of events) {
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data || data === "[DONE]") { continue; }
        const chunk = JSON.parse(data);
        if (chunk.error) { throw new Error(corralErrorText(chunk, "The model failed.")); }
        if (chunk.usage) { usage = chunk.usage; }
        for (const choice of chunk.choices || []) {
          const text = (choice.delta && choice.delta.content) || "";
          if (text) {
            if (first === null) { first = performance.now(); }
            out.textContent += text;
          }
        }
      }
    }
  } catch (error) {
    corralSay(String(error.message || error), true);
  }
  const ended = performance.now();
  out.dataset.done = "true";
  if (usage) {
    const decode = first === null ? 0 : (ended - first) / 1000;
    const rate = usage.completion_tokens > 1 && decode > 0 ? (usage.completion_tokens - 1) / decode : 0;
    stats.textContent = usage.completion_tokens + " tokens, " + rate.toFixed(1) + " tokens/s, first token after " +
      ((first === null ? ended : first) - started).toFixed(0) + " ms";
    stats.dataset.tokens = String(usage.completion_tokens);
  }
}

async function corralSimilarity(form) {
  const texts = form.texts.value.split("\n").map((t) => t.trim()).filter((t) => t);
  const table = document.getElementById("similarity");
  table.innerHTML = "";
  if (texts.length < 2) { corralSay("Give two texts or more, one per line.", true); return; }
  let reply;
  try {
    reply = await corralCall("POST", "/v1/embeddings", {model: form.model.value, input: texts});
  } catch (error) { corralSay(String(error.message || error), true); return; }
  corralSay("");
  const vectors = reply.data.map((d) => d.embedding);
  const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0)) || 1;
  const cosine = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
  const head = table.insertRow();
  head.insertCell().textContent = "";
  texts.forEach((t) => { head.insertCell().textContent = t; });
  vectors.forEach((a, i) => {
    const row = table.insertRow();
    row.insertCell().textContent = texts[i];
    vectors.forEach((b) => {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = cosine(a, b).toFixed(3);
    });
  });
  table.dataset.size = String(vectors.length);
}

// The V2 form: one input per tensor of the model's schema, filled with its example
// request (one that passes the schema and the server); shape and data are editable.
async function corralInferForm(model) {
  const fields = document.getElementById("v2-inputs");
  fields.innerHTML = "";
  document.getElementById("v2-output").textContent = "";
  if (!model) { return; }
  let schema;
  try { schema = await corralCall("GET", "/admin/models/" + model + "/schema"); } catch (error) {
    corralSay(String(error.message || error), true);
    return;
  }
  for (const input of schema.example.inputs) {
    const box = document.createElement("fieldset");
    box.className = "tensor";
    box.dataset.name = input.name;
    box.dataset.datatype = input.datatype;
    const legend = document.createElement("legend");
    legend.textContent = input.name + " (" + input.datatype + ")";
    const shape = document.createElement("input");
    shape.name = "shape";
    shape.value = JSON.stringify(input.shape);
    shape.setAttribute("aria-label", input.name + " shape");
    const data = document.createElement("textarea");
    data.name = "data";
    data.rows = 3;
    data.value = JSON.stringify(input.data);
    data.setAttribute("aria-label", input.name + " data");
    box.append(legend, "shape ", shape, data);
    fields.appendChild(box);
  }
  corralSay("");
}

async function corralInfer(form) {
  const out = document.getElementById("v2-output");
  out.textContent = "";
  const inputs = [];
  try {
    for (const box of document.querySelectorAll("#v2-inputs fieldset")) {
      inputs.push({
        name: box.dataset.name, datatype: box.dataset.datatype,
        shape: JSON.parse(box.querySelector("input").value),
        data: JSON.parse(box.querySelector("textarea").value),
      });
    }
  } catch (e) { corralSay("A shape or data field is not JSON: " + e.message, true); return; }
  try {
    const reply = await corralCall("POST", "/v2/models/" + form.model.value + "/infer", {inputs});
    corralSay("");
    out.textContent = JSON.stringify(reply.outputs, null, 2);
    out.dataset.done = "true";
  } catch (error) { corralSay(String(error.message || error), true); }
}
