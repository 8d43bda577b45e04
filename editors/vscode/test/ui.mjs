// Drives code-server (real VS Code in a browser) with headless Chromium through
// playwright-core, as a person would: open a file, type, wait for ghost text, press keys, read
// the editor and the status bar back, change settings, run commands.
//
//   node ui.mjs PLAN.json
//
// PLAN: {url, shots, settings and machineSettings (the User and Remote settings.json files),
//        logs (the user-data logs folder),
//        scenarios: [{name, ...}]} — see SCENARIOS below for each one's fields.
// Prints one JSON line: {scenario name: {what it saw..., error?}}. A scenario that fails
// records its error and a screenshot (SHOTS/vscode-failed-NAME-STEP.png); the next one runs.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";

const require = createRequire(process.env.PLAYWRIGHT_CORE ?? import.meta.url);
const { chromium } = require("playwright-core");
const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
fs.mkdirSync(plan.shots, { recursive: true });

const profile = fs.mkdtempSync(path.join(process.env.XDG_CACHE_HOME ?? os.tmpdir(), "chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/lib/chromium/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = browser.pages()[0] ?? (await browser.newPage());
const results = {};

// ---------------------------------------------------------------------------------------------
// What a person sees

const GHOST = ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text";
const STATUS = '[id="latent.latent.latent.status"], [id="latent.status"], .statusbar-item:has-text("Latent")';

const ghostText = () => page.evaluate((sel) => [...document.querySelectorAll(sel)]
  .map((e) => e.textContent).join("").replace(/\u00a0/g, " "), GHOST);

const statusText = async () => ((await page.locator(STATUS).first().textContent()) ?? "").trim();

/** The status bar item's tooltip, as hovering shows it. */
async function tooltip() {
  await page.locator(STATUS).first().hover();
  const hover = page.locator(".workbench-hover, .monaco-hover").filter({ hasText: "Latent" }).first();
  await hover.waitFor({ timeout: 5000 });
  const text = (await hover.innerText()).trim();
  await page.mouse.move(640, 400); // away: the hover closes; the editor keeps the focus
  await hover.waitFor({ state: "hidden", timeout: 5000 }).catch(() => {});
  return text;
}

/** The ghost text by lines: [the part on the cursor's line, ...each line drawn below it]. */
const ghostLines = () => page.evaluate(() => {
  const text = (e) => (e.textContent ?? "").replace(/\u00a0/g, " ");
  const inline = [...document.querySelectorAll(".monaco-editor .ghost-text-decoration")].map(text).join("");
  const below = [...document.querySelectorAll(".monaco-editor .suggest-preview-text .view-line")].map(text);
  return [inline, ...below];
});

/** The cursor's line as the editor draws it, without ghost text. */
const cursorLine = () => page.evaluate(() => {
  const current = document.querySelector(".monaco-editor .view-overlays .current-line");
  const top = current ? current.parentElement.style.top : null;
  const line = [...document.querySelectorAll(".monaco-editor .view-lines .view-line")].find((e) => e.style.top === top);
  if (!line) return null;
  const copy = line.cloneNode(true);
  copy.querySelectorAll(".ghost-text-decoration, .ghost-text, .ghost-text-decoration-preview").forEach((e) => e.remove());
  return copy.textContent.replace(/\u00a0/g, " ");
});

async function waitFor(what, check, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
    await page.waitForTimeout(100);
  }
}

const waitGhost = (what, want = (g) => g.length > 0, timeout = 20000) =>
  waitFor(what, async () => { const g = await ghostText(); return want(g) ? g || " " : null; }, timeout);

/** The Latent output channel as written to disk (user-data/logs/DATE/exthostN/latent.latent/Latent.log). */
function latentLog() {
  const found = [];
  const walk = (dir, depth) => {
    for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory() && depth < 4) walk(full, depth + 1);
      else if (entry.name === "Latent.log") found.push(full);
    }
  };
  walk(plan.logs, 0);
  return found.map((f) => fs.readFileSync(f, "utf8")).join("\n");
}
const logLines = (pattern) => latentLog().split("\n").filter((l) => new RegExp(pattern).test(l));
const waitLog = (what, pattern, min = 1, timeout = 20000) =>
  waitFor(what, () => logLines(pattern).length >= min, timeout);

/** Change settings as a person would: in settings.json's editor, then save (code-server does
 *  not notice the file changing on disk). `remote`: the Remote settings (Machine/settings.json),
 *  where a remote window such as code-server reads the user-only ("machine") settings. */
async function setSettings(patch, remote = false) {
  const file = remote ? plan.machineSettings : plan.settings;
  const settings = { ...JSON.parse(fs.readFileSync(file, "utf8")), ...patch };
  await runCommand(remote ? "Preferences: Open Remote Settings (JSON)" : "Preferences: Open User Settings (JSON)");
  await page.waitForSelector('.tab.active[aria-label*="settings.json"]', { timeout: 15000 });
  await page.locator(".editor-group-container.active .monaco-editor .view-lines").first().click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(JSON.stringify(settings)); // one line: no auto-indent
  await page.keyboard.press("Shift+Control+End"); // and no bracket the editor closed itself
  await page.keyboard.press("Delete");
  await page.keyboard.press("Control+S");
  await waitFor("settings.json saved", () => {
    try {
      return JSON.stringify(JSON.parse(fs.readFileSync(file, "utf8"))) === JSON.stringify(settings);
    } catch {
      return false;
    }
  }, 10000);
  await page.waitForSelector(".tab.active.dirty", { state: "detached", timeout: 10000 });
  await page.keyboard.press("Control+W");
  await page.waitForTimeout(300);
}

async function openFile(name) {
  await page.keyboard.press("Control+P");
  await page.waitForSelector(".quick-input-widget input", { timeout: 10000 });
  await page.keyboard.type(name);
  await page.waitForSelector(`.quick-input-list .monaco-list-row[aria-label*="${name}"]`, { timeout: 10000 });
  await page.keyboard.press("Enter");
  await page.waitForSelector(`.tab.active[aria-label*="${name}"]`, { timeout: 15000 });
  await page.locator(".editor-group-container.active .monaco-editor .view-lines").first().click();
  await page.keyboard.press("Control+End");
}

/** Save and close the active editor (the server then forgets the document). */
async function saveAndClose() {
  await page.keyboard.press("Escape");
  await page.keyboard.press("Control+S");
  await page.waitForTimeout(400);
  await page.keyboard.press("Control+W");
  await page.waitForTimeout(300);
}

async function runCommand(title) {
  await page.keyboard.press("F1");
  const palette = page.locator(".quick-input-widget input");
  if (!(await palette.waitFor({ timeout: 3000 }).then(() => true, () => false))) {
    // the focus went with a closed webview (the statistics' preview): back to the workbench
    await page.locator(".part.editor").first().click();
    await page.keyboard.press("F1");
    await palette.waitFor({ timeout: 10000 });
  }
  await page.keyboard.type(title);
  const row = page.locator(`.quick-input-list .monaco-list-row[aria-label*="${title}"]`).first();
  await row.waitFor({ timeout: 10000 });
  await row.click();
}

const toasts = () => page.evaluate(() => [...document.querySelectorAll(".notifications-toasts .notification-toast")]
  .map((t) => ({
    text: (t.querySelector(".notification-list-item-message")?.textContent ?? t.textContent ?? "").trim(),
    buttons: [...t.querySelectorAll(".monaco-button")].map((b) => (b.textContent ?? "").trim()).filter(Boolean),
  })));

/** Type s.typed in s.file, ask with Alt+\ (`s.asked`: the answer's log pattern), then Alt+]:
 *  out.first and out.second are the ghost texts before and after. */
async function askAndCycle(s, out) {
  await openFile(s.file);
  await page.keyboard.type(s.typed, { delay: 60 });
  await waitGhost("ghost text while typing");
  const before = logLines(s.asked).length;
  await page.keyboard.press("Alt+Backslash");
  await waitLog("the answer to the trigger key", s.asked, before + 1, 15000);
  await page.waitForTimeout(500);
  out.first = await ghostText();
  await page.keyboard.press("Alt+BracketRight");
  out.second = await waitGhost("the next suggestion", (g) => g.length > 0 && g !== out.first, 10000);
  await page.waitForTimeout(300);
  out.second = await ghostText();
}

// ---------------------------------------------------------------------------------------------
// Scenarios: each gets its plan entry and the object it fills in

const SCENARIOS = {
  /** The workbench loads and the status bar turns to a check mark once the model is loaded. */
  async ready(s, out) {
    await page.goto(plan.url, { waitUntil: "domcontentloaded", timeout: 30000 });
    await page.waitForSelector(".monaco-workbench", { timeout: 30000 });
    await page.locator(STATUS).first().waitFor({ timeout: 30000 });
    await page.waitForFunction(() => [...document.querySelectorAll(".statusbar-item")]
      .some((e) => /Latent/.test(e.textContent ?? "") && e.querySelector(".codicon-check")), null, { timeout: 60000 });
    out.statusBar = await statusText();
  },

  /** {file, typed}: type, ghost text, the status after the model's answer and after typing
   *  the ghost's first character (answered by typing-through), Tab. */
  async accept(s, out) {
    await openFile(s.file);
    await page.keyboard.type(s.typed, { delay: 60 });
    out.ghost = await waitGhost("ghost text");
    await page.waitForTimeout(300);
    out.ghost = await ghostText();
    await page.screenshot({ path: path.join(plan.shots, "vscode-ghost.png") });
    out.statusAfterModel = await waitFor("the model's latency in the status bar", async () => {
      const t = await statusText();
      return / ms · \d+ tok/.test(t) ? t : null;
    }, 10000);
    const through = `\\] lsp_server\\.requests: inline ${s.file.replace(/[.]/g, "\\.")}:\\S+ typing-through/`;
    const before = logLines(through).length;
    out.typedThroughBefore = before;   // the answer to the ghost's first character is the next one
    await page.keyboard.type(out.ghost[0]);
    await waitLog("a typed-through answer", through, before + 1, 10000);
    await page.waitForTimeout(500);
    out.statusAfterTypingThrough = await statusText();
    out.tooltipAfterTypingThrough = await tooltip();
    await waitGhost("the ghost text still shown");
    await page.keyboard.press("Tab");
    await page.waitForTimeout(500);
    out.lineAfterTab = await cursorLine();
    await page.screenshot({ path: path.join(plan.shots, "vscode-accepted.png") });
    await saveAndClose();
  },

  /** {file, typed}: Tab, then whatever the server answers at the end of the accepted text,
   *  Tab again if that shows ghost text. */
  async twice(s, out) {
    await openFile(s.file);
    await page.keyboard.type(s.typed, { delay: 60 });
    await waitGhost("ghost text");
    await page.waitForTimeout(300);
    out.first = await ghostText();
    await page.keyboard.press("Tab");
    await page.waitForTimeout(200);
    const [, line, column] = /Ln (\d+), Col (\d+)/.exec(await page.locator('[id="status.editor.selection"]').textContent());
    const file = s.file.replace(/[.]/g, "\\.");
    await waitLog("the answer after the accept", `\\] lsp_server\\.requests: inline ${file}:${line}:${column}: \\S+/\\S+ in `, 1, 15000);
    await page.waitForTimeout(800);
    out.next = await ghostText();
    out.tooltip = await tooltip();
    if (out.next) await page.keyboard.press("Tab");
    await page.waitForTimeout(300);
    out.line = await cursorLine();
    await page.screenshot({ path: path.join(plan.shots, "vscode-accepted-twice.png") });
    await saveAndClose();
  },

  /** {file, typed, asked}: the trigger key (Alt+\), then Alt+] to the next suggestion, Tab.
   *  `asked`: a log pattern for the trigger's answer. */
  async cycle(s, out) {
    await askAndCycle(s, out);
    await page.screenshot({ path: path.join(plan.shots, "vscode-cycled.png") });
    await page.keyboard.press("Tab");
    await page.waitForTimeout(500);
    out.line = await cursorLine();
    await saveAndClose();
  },

  /** {file, typed}: Ctrl+Right accepts the ghost text's next word; what is left stays offered. */
  async word(s, out) {
    await openFile(s.file);
    await page.keyboard.type(s.typed, { delay: 60 });
    await waitGhost("ghost text");
    await page.waitForTimeout(300);
    out.ghost = await ghostText();
    await page.keyboard.press("Control+ArrowRight");
    await waitFor("the word accepted", async () => (await ghostText()) !== out.ghost, 5000).catch(() => {});
    await page.waitForTimeout(500);
    out.line = await cursorLine();
    out.rest = await ghostText();
    await page.screenshot({ path: path.join(plan.shots, "vscode-accepted-word.png") });
    await saveAndClose();
  },

  /** {file, typed}: Shift+Tab accepts the ghost text's next line (all of a one-line one);
   *  `lines`: the ghost text by lines before and after. */
  async line(s, out) {
    await openFile(s.file);
    await page.keyboard.type(s.typed, { delay: 60 });
    await waitGhost("ghost text");
    await page.waitForTimeout(500);
    out.lines = await ghostLines();
    out.lineBefore = await cursorLine();
    await page.screenshot({ path: path.join(plan.shots, "vscode-line-ghost.png") });
    await page.keyboard.press("Shift+Tab");
    const shown = JSON.stringify(out.lines);
    await waitFor("the line accepted", async () => JSON.stringify(await ghostLines()) !== shown, 5000).catch(() => {});
    await page.waitForTimeout(500);
    out.linesAfter = await ghostLines();
    out.lineAfter = await cursorLine();
    await page.screenshot({ path: path.join(plan.shots, "vscode-accepted-line.png") });
    await saveAndClose();
  },

  /** {file, typed, asked}: the trigger key, Alt+] to the next suggestion, Alt+[ back, Tab. */
  async previous(s, out) {
    await askAndCycle(s, out);
    await page.keyboard.press("Alt+BracketLeft");
    await waitGhost("the previous suggestion", (g) => g.length > 0 && g !== out.second, 10000).catch(() => {});
    await page.waitForTimeout(300);
    out.back = await ghostText();
    await page.screenshot({ path: path.join(plan.shots, "vscode-cycled-back.png") });
    await page.keyboard.press("Tab");
    await page.waitForTimeout(500);
    out.line = await cursorLine();
    await saveAndClose();
  },

  /** {file, typed, requests}: trigger = manual; typing sends no request (`requests`: a log
   *  pattern for any inline request of the file, answered or not), the trigger key one. */
  async manual(s, out) {
    await setSettings({ "latent.trigger": "manual" });
    out.status = await waitFor("manual mode in the status bar", async () => {
      const t = await statusText();
      return / manual/.test(t) ? t : null;
    }, 15000);
    await openFile(s.file);
    const before = logLines(s.requests).length;
    await page.keyboard.type(s.typed, { delay: 60 });
    await page.waitForTimeout(1500);
    out.requestsWhileTyping = logLines(s.requests).length - before;
    out.ghostWhileTyping = await ghostText();
    await page.keyboard.press("Alt+Backslash");
    out.ghostAfterTrigger = await waitGhost("ghost text after the trigger key");
    await page.waitForTimeout(300);
    out.ghostAfterTrigger = await ghostText();
    out.requestsAfterTrigger = logLines(s.requests).length - before;
    await page.screenshot({ path: path.join(plan.shots, "vscode-manual.png") });
    await saveAndClose();
    await setSettings({ "latent.trigger": "auto" });
  },

  /** Latent: Show Statistics: the page's text (the Markdown preview, else the editor). */
  async stats(s, out) {
    await runCommand("Latent: Show Statistics");
    out.text = await waitFor("the statistics page", async () => {
      for (const frame of page.frames()) {
        const text = await frame.evaluate(() => document.body?.innerText ?? "").catch(() => "");
        if (text.includes("Latent statistics")) return text;
      }
      return null;
    }, 15000);
    await page.screenshot({ path: path.join(plan.shots, "vscode-statistics.png") });
    await page.keyboard.press("Control+W");
  },

  /** Latent: Snooze… → 15 minutes: the status bar says until when. */
  async snooze(s, out) {
    await runCommand("Latent: Snooze");
    await page.waitForSelector('.quick-input-list .monaco-list-row[aria-label*="15 minutes"]', { timeout: 10000 });
    await page.keyboard.press("Enter");
    out.status = await waitFor("the snooze in the status bar", async () => {
      const t = await statusText();
      return /until/.test(t) ? t : null;
    }, 10000);
    out.tooltip = await tooltip();
    await page.screenshot({ path: path.join(plan.shots, "vscode-snoozed.png") });
  },

  /** {path}: latent.server.path set to a missing program: the notifications, then the button. */
  async missing(s, out) {
    await setSettings({ "latent.server.path": s.path }, true);
    await waitFor("a notification", async () => (await toasts()).some((t) => /Latent/.test(t.text)), 20000);
    await page.waitForTimeout(2500); // any second one would be there by now
    out.toasts = (await toasts()).filter((t) => /Latent/i.test(t.text));
    out.status = await statusText();
    await page.screenshot({ path: path.join(plan.shots, "vscode-missing-server.png") });
    await page.locator(".notifications-toasts .monaco-button", { hasText: "Open Setting" }).first().click();
    await page.waitForSelector(".settings-editor .setting-item-contents", { timeout: 15000 });
    await page.waitForTimeout(500);
    out.settingsShown = await page.evaluate(() => [...document.querySelectorAll(".settings-editor .setting-item-contents")]
      .map((e) => (e.querySelector(".setting-item-title")?.textContent ?? "").trim()));
  },
};

for (const scenario of plan.scenarios) {
  const out = (results[scenario.name] = {});
  try {
    await SCENARIOS[scenario.name](scenario, out);
  } catch (e) {
    out.error = e.message.split("\n")[0];
    await page.screenshot({ path: path.join(plan.shots, `vscode-failed-${scenario.name}.png`) }).catch(() => {});
    await page.keyboard.press("Escape").catch(() => {});
    if (scenario.name === "ready") break;
  }
}
console.log(JSON.stringify(results));
await browser.close();
