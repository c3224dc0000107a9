// Refreshes the status page from /status.json every two seconds. All formatting is done
// by the server (the "view" part of the answer); this only puts strings in place.
"use strict";

function cell(value) {
  const td = document.createElement("td");
  if (value && typeof value === "object" && value.img) {
    const img = document.createElement("img");
    img.src = value.img;
    img.className = "thumb";
    img.alt = "redacted snapshot";
    td.appendChild(img);
  } else {
    td.textContent = value;
  }
  return td;
}

function render(view) {
  for (const [key, text] of Object.entries(view.text)) {
    document.querySelectorAll(`[data-k="${key}"]`).forEach((el) => { el.textContent = text; });
  }
  for (const [key, cls] of Object.entries(view.states)) {
    document.querySelectorAll(`[data-state="${key}"]`).forEach((el) => { el.className = `state ${cls}`; });
  }
  for (const [id, rows] of Object.entries(view.tables)) {
    const body = document.getElementById(id);
    if (!body) continue;
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      row.forEach((value) => tr.appendChild(cell(value)));
      return tr;
    }));
  }
  for (const [key, url] of Object.entries(view.images)) {
    document.querySelectorAll(`img[data-img="${key}"]`).forEach((img) => {
      if (url && img.getAttribute("src") !== url) img.setAttribute("src", url);
    });
  }
}

async function refresh() {
  try {
    const response = await fetch("/status.json", { headers: { Accept: "application/json" } });
    if (response.status === 401) { window.location = "/login"; return; }
    if (response.ok) render((await response.json()).view);
  } catch (err) {
    document.querySelector('[data-k="updated"]').textContent = `offline (${err})`;
  }
}

async function act(button) {
  const result = document.getElementById("action-result");
  button.disabled = true;
  try {
    // The session's CSRF token: without it the server refuses any action (see httpkit/csrf.py).
    const token = document.querySelector('meta[name="csrf-token"]').content;
    const response = await fetch(button.dataset.action, { method: "POST", headers: { "X-CSRF-Token": token } });
    const body = await response.json();
    result.textContent = body.message || body.error || response.statusText;
  } catch (err) {
    result.textContent = String(err);
  } finally {
    button.disabled = false;
    refresh();
  }
}

document.querySelectorAll("button[data-action]").forEach((b) => b.addEventListener("click", () => act(b)));
setInterval(refresh, 2000);
