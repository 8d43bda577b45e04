// Drives code-server (real VS Code in a browser) with headless Chromium through
// playwright-core, as a person would: open a Python file, type, wait for ghost text, Tab.
//
//   node ui.mjs URL FILE_NAME TEXT_TO_TYPE SCREENSHOT_DIR
//
// Prints one JSON line: {ghost, statusBar, lineAfterTab}; screenshots go to SCREENSHOT_DIR.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";

const require = createRequire(process.env.PLAYWRIGHT_CORE ?? import.meta.url);
const { chromium } = require("playwright-core");
const [url, fileName, typed, shots] = process.argv.slice(2);
fs.mkdirSync(shots, { recursive: true });

const profile = fs.mkdtempSync(path.join(process.env.XDG_CACHE_HOME ?? os.tmpdir(), "chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/lib/chromium/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = browser.pages()[0] ?? (await browser.newPage());
const result = {};
const step = async (name, fn) => {
  try {
    return await fn();
  } catch (e) {
    await page.screenshot({ path: path.join(shots, `vscode-failed-${name}.png`) }).catch(() => {});
    result.error = `${name}: ${e.message.split("\n")[0]}`;
    console.log(JSON.stringify(result));
    await browser.close();
    process.exit(1);
  }
};

await step("workbench", async () => {
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 30000 });
  await page.waitForSelector(".monaco-workbench", { timeout: 30000 });
});
await step("status-ready", async () => {
  // the extension's status bar item turns to a check mark once the model is loaded
  const item = page.locator('[id="latent.latent.latent.status"], [id="latent.status"], .statusbar-item:has-text("Latent")').first();
  await item.waitFor({ timeout: 30000 });
  await page.waitForFunction(() => [...document.querySelectorAll(".statusbar-item")]
    .some((e) => /Latent/.test(e.textContent ?? "") && e.querySelector(".codicon-check")), null, { timeout: 45000 });
  result.statusBar = (await item.textContent())?.trim();
});
await step("open-file", async () => {
  await page.keyboard.press("Control+P");
  await page.waitForSelector(".quick-input-widget input", { timeout: 10000 });
  await page.keyboard.type(fileName);
  await page.waitForSelector(`.quick-input-list .monaco-list-row[aria-label*="${fileName}"]`, { timeout: 10000 });
  await page.keyboard.press("Enter");
  await page.waitForSelector(".monaco-editor .view-lines", { timeout: 15000 });
  await page.locator(".monaco-editor .view-lines").first().click();
  await page.keyboard.press("Control+End");
});
await step("ghost-text", async () => {
  await page.keyboard.type(typed, { delay: 60 });
  const ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text").first();
  await ghost.waitFor({ timeout: 30000 });
  await page.waitForTimeout(300);
  result.ghost = await page.evaluate(() => [...document.querySelectorAll(
    ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text")].map((e) => e.textContent).join("").replace(/\u00a0/g, " "));
  await page.screenshot({ path: path.join(shots, "vscode-ghost.png") });
});
await step("accept", async () => {
  await page.keyboard.press("Tab");
  await page.waitForTimeout(500);
  // the cursor's line as the editor draws it
  result.lineAfterTab = await page.evaluate(() => {
    const current = document.querySelector(".monaco-editor .view-overlays .current-line");
    const top = current ? current.parentElement.style.top : null;
    const line = [...document.querySelectorAll(".monaco-editor .view-lines .view-line")]
      .find((e) => e.style.top === top);
    if (!line) return null;
    const copy = line.cloneNode(true);  // the text, without any new ghost text shown after it
    copy.querySelectorAll(".ghost-text-decoration, .ghost-text, .ghost-text-decoration-preview").forEach((e) => e.remove());
    return copy.textContent.replace(/\u00a0/g, " ");
  });
  await page.keyboard.press("Control+S");
  await page.waitForTimeout(800);
  await page.screenshot({ path: path.join(shots, "vscode-accepted.png") });
});
console.log(JSON.stringify(result));
await browser.close();
