// gigarouter: a little progressive enhancement. Every page works without it.
"use strict";

// Copy buttons: <button data-copy="ID"> copies the text of #ID and says so.
function setupCopy() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const label = button.textContent;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      const text = source.textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (err) {
        // No clipboard (insecure origin): select the text so Ctrl+C works.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      button.setAttribute("aria-live", "polite");
      setTimeout(() => { button.textContent = label; }, 2500);
    });
  }
}

// Try-it: post the two texts as JSON and show the similarity in place.
function setupTry() {
  const form = document.querySelector("form[data-try]");
  if (!form) return;
  const output = document.getElementById("try-output");
  const button = form.querySelector("button[type=submit]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    button.disabled = true;
    output.textContent = "Embedding…";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          "Accept": "application/json",
          "X-CSRF-Token": data.get("csrf_token"),
        },
        body: JSON.stringify({ a: data.get("a"), b: data.get("b"), mode: data.get("mode") }),
        credentials: "same-origin",
      });
      const result = await response.json();
      output.replaceChildren();
      if (!response.ok || result.error) {
        const span = document.createElement("span");
        span.className = "error";
        // Try-it answers {error: "text"}; other refusals (an expired form) use the API's {error: {message}}.
        const error = result.error;
        span.textContent = (typeof error === "string" ? error : error && error.message) || "Something went wrong.";
        output.append(span);
      } else {
        const strong = document.createElement("strong");
        strong.textContent = result.similarity.toFixed(4);
        const info = document.createElement("span");
        info.className = "muted";
        info.textContent = ` (${result.tokens} tokens, ${Math.round(result.ms)} ms)`;
        output.append("Cosine similarity: ", strong, info);
      }
    } catch (err) {
      output.textContent = "Could not reach the server.";
    } finally {
      button.disabled = false;
    }
  });
}

// Buttons that ask before they act: <button data-confirm="Question?">.
function setupConfirm() {
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopy();
  setupTry();
  setupConfirm();
  setupRunProgress();
});

// Onboarding queue: a running run's progress, polled once a second; the page reloads when it ends.
function setupRunProgress() {
  for (const run of document.querySelectorAll("[data-run-url]")) {
    const progress = run.querySelector(".progress");
    const poll = async () => {
      try {
        const answer = await fetch(run.dataset.runUrl, { headers: { Accept: "application/json" } });
        if (answer.ok) {
          const state = await answer.json();
          if (state.state !== "running") { window.location.reload(); return; }
          if (progress) progress.textContent = state.progress;
        }
      } catch (err) { /* the next poll tries again */ }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
  }
}
