// The page of scripts/serve.py: POST /translate with attention, then draw the answer.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the last answer's first entry with attention

async function translate() {
  await described; // the server's defaults (beam size, target language) are in the form first
  const lines = $("source").value.split("\n").filter((l) => l.trim() !== "");
  if (lines.length === 0) return;
  const beam = Number($("beam").value), nbest = Math.min(Number($("nbest").value), beam);
  $("translate").disabled = true;
  status("translating…");
  try {
    const response = await fetch("/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request(lines, beam, nbest)),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    show(answer.translations);
    status("");
  } catch (err) {
    status(err.message, true);
  } finally {
    $("translate").disabled = false;
  }
}

function request(lines, beam, nbest) {
  const body = { text: lines, beam_size: beam, n_best: nbest, attention: true };
  if (!$("target").hidden) body.tgt_lang = $("tgt_lang").value;
  return body;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function show(translations) {
  $("output").textContent = translations.map((t) => t.text).join("\n");
  const list = $("alternatives");
  list.replaceChildren();
  for (const alt of translations[0].n_best || [translations[0]]) {
    const item = document.createElement("li");
    item.textContent = alt.text;
    if (alt.score !== null && alt.score !== undefined) {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = alt.score.toFixed(3);
      item.append(score);
    }
    list.append(item);
  }
  current = translations.find((t) => t.attention) || null;
  $("results").hidden = false;
  headButtons();
  heatmap("mean");
}

function headButtons() {
  const box = $("heads");
  box.replaceChildren();
  if (!current) return;
  const names = ["mean", ...current.attention.heads.map((_, h) => `head ${h + 1}`)];
  names.forEach((name, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.dataset.head = i === 0 ? "mean" : String(i - 1);
    button.addEventListener("click", () => heatmap(button.dataset.head));
    box.append(button);
  });
}

function heatmap(head) {
  const table = $("heatmap");
  table.replaceChildren();
  if (!current) return;
  for (const b of $("heads").children) b.classList.toggle("active", b.dataset.head === head);
  const weights = head === "mean" ? current.attention.mean : current.attention.heads[Number(head)];
  const thead = table.createTHead().insertRow();
  thead.append(document.createElement("th"));
  for (const piece of current.source_tokens) {
    const th = document.createElement("th");
    th.textContent = piece;
    thead.append(th);
  }
  const body = table.createTBody();
  current.target_tokens.forEach((target, t) => {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.textContent = target;
    row.append(th);
    current.source_tokens.forEach((source, s) => {
      const w = weights[t][s];
      const cell = row.insertCell();
      cell.style.background = `rgba(35, 48, 200, ${Math.min(1, w).toFixed(3)})`;
      cell.dataset.weight = w;
      cell.title = `${target} → ${source}: ${w.toFixed(3)}`;
      cell.addEventListener("mouseenter", () => { $("hover").textContent = cell.title; });
    });
  });
}

async function describe() {
  try {
    const response = await fetch("/info");
    if (!response.ok) return;
    const info = await response.json();
    $("beam").value = info.decode.beam_size;
    const targets = info.target_languages || [];
    if (targets.length === 0) {
      $("model").textContent = `${info.src_lang} → ${info.tgt_lang} · ${info.engine}`;
      return;
    }
    // A multilingual model: its directions, and a choice of target language.
    $("model").textContent = `${info.directions.join(", ")} · ${info.engine}`;
    for (const lang of targets) $("tgt_lang").append(new Option(lang, lang));
    if (info.decode.tgt_lang) $("tgt_lang").value = info.decode.tgt_lang;
    $("target").hidden = false;
  } catch (err) { /* the page works without it */ }
}

const described = describe();
$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate();
});
