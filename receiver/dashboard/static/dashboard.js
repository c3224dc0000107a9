// The dashboard works without this file; it adds two comforts. No inline script anywhere (CSP).
"use strict";

// Forms that change something for good ask first.
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});

// Pages that say so reload themselves, unless the user is typing into a form.
const every = Number(document.body.dataset.refresh || 0);
if (every > 0) {
  let typing = false;
  document.addEventListener("input", () => { typing = true; });
  window.setInterval(() => {
    const field = document.activeElement;
    const busy = field && ["INPUT", "TEXTAREA", "SELECT"].includes(field.tagName);
    if (!typing && !busy && !document.hidden) window.location.reload();
  }, every * 1000);
}
