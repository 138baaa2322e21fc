"""The single HTML page of the web app (no external resources): drop or pick an image, see the top-k classes, the
boxes and one class-map overlay per class found. It calls ``POST predict`` and ``POST localize?render=1``."""
from __future__ import annotations

import html
import json

from ..runs import Run

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>gapvision: __TITLE__</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1100px;padding:0 1rem;
color:#222}
#drop{display:block;border:2px dashed #888;border-radius:10px;padding:2rem;text-align:center;cursor:pointer;
background:#fafafa}
#drop.over{background:#e8f0fe;border-color:#4363d8}
#error{color:#b00020;font-weight:600;min-height:1.2em}
.row{display:flex;flex-wrap:wrap;gap:1.5rem;margin-top:1rem}.col{flex:1 1 320px}
#topk{list-style:none;padding:0}#topk li{margin:.3rem 0}
.bar{height:.6rem;background:#4363d8;border-radius:3px}
#maps{display:flex;flex-wrap:wrap;gap:.6rem}#maps figure{margin:0;width:220px;font-size:.85rem}
#maps img,#boxes img,#preview{width:100%;display:block}#boxes img,#preview{max-width:480px}
#status{color:#666}small{color:#666}
</style></head>
<body>
<h1>gapvision</h1>
<p><small>__TITLE__ &middot; __NCLASSES__ classes</small></p>
<label id="drop" for="file">Drop an image here, or click to choose one
<input id="file" type="file" accept="image/*" hidden></label>
<p id="status"></p><p id="error" role="alert"></p>
<div class="row">
<div class="col"><h2>Top classes</h2><ol id="topk"></ol><img id="preview" alt="" hidden></div>
<div class="col" id="boxes"><h2>Boxes</h2><p id="boxes-note"><small>no image yet</small></p></div>
</div>
<h2>Class maps</h2><div id="maps"><small>no image yet</small></div>
<details><summary>JSON</summary><pre id="json"></pre></details>
<script>
const CONFIG = __CONFIG__;
const $ = (id) => document.getElementById(id);
function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
function text(tag, s) { const e = document.createElement(tag); e.textContent = s; return e; }
function image(src, alt) { const i = document.createElement("img"); i.src = src; i.alt = alt; return i; }
async function post(path, file) {
  const form = new FormData(); form.append("file", file, file.name);
  const r = await fetch(path, {method: "POST", body: form});
  let body = null; try { body = await r.json(); } catch (e) { body = {detail: r.statusText}; }
  if (!r.ok) throw new Error((body && body.detail) || ("HTTP " + r.status));
  return body;
}
function showTop(result) {
  const list = $("topk"); clear(list);
  for (const t of result.top) {
    const li = document.createElement("li");
    li.appendChild(text("span", t.label + "  " + (100 * t.prob).toFixed(1) + " %"));
    li.dataset.label = t.label;
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = Math.max(1, Math.round(100 * t.prob)) + "%"; li.appendChild(bar);
    list.appendChild(li);
  }
}
function showLocalize(loc) {
  const boxes = $("boxes"); clear(boxes); boxes.appendChild(text("h2", "Boxes"));
  boxes.appendChild(image(loc.renders.boxes, "image with boxes"));
  const names = loc.detections.map(d => d.label + " " + d.score.toFixed(2));
  boxes.appendChild(text("p", names.length ? names.join(", ") : "no class passed the threshold"));
  const maps = $("maps"); clear(maps);
  for (const m of loc.renders.maps) {
    const f = document.createElement("figure");
    f.appendChild(image(m.overlay, "class map of " + m.label));
    f.appendChild(text("figcaption", m.label + " " + m.score.toFixed(2)));
    maps.appendChild(f);
  }
  if (!loc.renders.maps.length) maps.appendChild(text("small", "no class map above the threshold"));
}
async function send(file) {
  $("error").textContent = "";
  if (file.size > CONFIG.maxBytes) {
    $("error").textContent = file.name + " is larger than the upload limit of " +
      (CONFIG.maxBytes / 1048576).toFixed(1) + " MB"; return;
  }
  const preview = $("preview"); preview.src = URL.createObjectURL(file); preview.hidden = false;
  $("status").textContent = "classifying " + file.name + " ...";
  document.body.dataset.state = "busy";
  try {
    const pred = await post("predict", file);
    showTop(pred);
    $("json").textContent = JSON.stringify(pred, null, 2);
    $("status").textContent = "locating classes ...";
    try {
      const loc = await post("localize?render=1", file);
      showLocalize(loc);
      const shown = Object.assign({}, loc); delete shown.renders;
      $("json").textContent += "\\n" + JSON.stringify(shown, null, 2);
    } catch (e) { const maps = $("maps"); clear(maps); maps.appendChild(text("small", e.message)); }
    $("status").textContent = file.name;
    document.body.dataset.state = "done";
  } catch (e) {
    $("error").textContent = e.message; $("status").textContent = "";
    document.body.dataset.state = "error";
  }
}
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) send(e.target.files[0]); });
document.body.dataset.state = "ready";
</script>
</body></html>
"""


def render_page(run: Run, max_upload_bytes: int) -> str:
    mc = run.model_config
    title = f"{mc.model} + {mc.head} head" + (f" ({run.path.name})" if run.path is not None else "")
    config = json.dumps({"maxBytes": int(max_upload_bytes)}).replace("<", "\\u003c")
    return (TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__NCLASSES__", str(len(run.classes)))
            .replace("__CONFIG__", config))
