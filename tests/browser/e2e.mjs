// End-to-end test of the KARL studio app in a real browser (Debian's Chromium through
// playwright-core; no browser download).
//
//   node e2e.mjs URL IMAGE OUT_DIR
//
// Opens the app, uploads IMAGE in the Tokenize tab, reads the token count (KC-hat), moves
// the epsilon slider to its maximum, waits for the token count to change, and saves
// screenshots to OUT_DIR. Prints one JSON line {kc_before, kc_after, ...}; exits 1 on failure.
import { chromium } from "playwright-core";
import path from "node:path";
import fs from "node:fs";

const [url, image, outDir] = process.argv.slice(2);
if (!url || !image || !outDir) {
  console.error("usage: node e2e.mjs URL IMAGE OUT_DIR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
fs.mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage"],
});
const result = { url, image: path.basename(image) };
let page;
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
  page.setDefaultTimeout(60_000);
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url, { waitUntil: "domcontentloaded" });

  const kcInput = page.locator("#kc-hat input");
  await kcInput.waitFor();
  const readKc = async () => (await kcInput.inputValue()).trim();

  // The metrics table names the epsilon it was computed for: wait for it, then for the
  // outputs to leave their pending state, then read the token count.
  const settled = async (eps) => {
    await page.waitForFunction(
      (e) => { const m = document.querySelector("#metrics"); return m && m.innerText.includes(`vs ${e}`); },
      eps, { timeout: 90_000 });
    await page.waitForFunction(() => document.querySelectorAll(".pending").length === 0, null, { timeout: 60_000 });
    return await readKc();
  };

  // Upload through the image component's file input.
  await page.locator("#input-image input[type=file]").setInputFiles(image);
  const range = page.locator("#epsilon-slider input[type=range]");
  result.epsilon_before = await range.inputValue();
  result.kc_before = await settled(result.epsilon_before);
  await page.screenshot({ path: path.join(outDir, "01_uploaded.png"), fullPage: true });

  // Move the epsilon slider to its maximum with the keyboard (fires input + change).
  await range.focus();
  await page.keyboard.press("End");
  await range.dispatchEvent("change");
  result.epsilon_after = await range.inputValue();
  result.kc_after = await settled(result.epsilon_after);
  await page.screenshot({ path: path.join(outDir, "02_epsilon_moved.png"), fullPage: true });
  result.page_errors = consoleErrors;
  result.ok = result.kc_before !== result.kc_after;
} catch (err) {
  result.ok = false;
  result.error = String(err);
  if (page) {
    try { await page.screenshot({ path: path.join(outDir, "failure.png"), fullPage: true }); } catch {}
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
