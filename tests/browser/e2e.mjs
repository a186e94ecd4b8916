// End-to-end test of the KARL studio app in a real browser (Debian's Chromium through
// playwright-core; no browser download).
//
//   node e2e.mjs URL EXAMPLE_IMAGE BAD_FILE OUT_DIR
//
// What a first-time user meets, in order:
//   0. the first view: the token-count boxes are empty (a "0" would read as a result);
//   1. clicks the example EXAMPLE_IMAGE (by file name) in the Tokenize tab: the numbers and
//      both plots appear (the time between them is measured), the halting plot's title fits;
//   2. moves the epsilon slider to its maximum: the token count changes;
//   3. uploads BAD_FILE (not a decodable image): every output is cleared, the error is shown
//      once, in the page, with no error toast;
//   4. uploads EXAMPLE_IMAGE: results again, the error is gone.
// Screenshots of each step go to OUT_DIR. Prints one JSON line; exits 1 on failure.
import { chromium } from "playwright-core";
import path from "node:path";
import fs from "node:fs";

const [url, image, badFile, outDir] = process.argv.slice(2);
if (!url || !image || !badFile || !outDir) {
  console.error("usage: node e2e.mjs URL EXAMPLE_IMAGE BAD_FILE OUT_DIR");
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
const result = { url, image: path.basename(image), checks: {} };
const check = (name, ok, detail) => { result.checks[name] = ok ? true : (detail ?? false); };
let page;
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
  page.setDefaultTimeout(60_000);
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(url, { waitUntil: "domcontentloaded" });

  const kcInput = page.locator("#kc-hat input, #kc-hat textarea").first();
  await kcInput.waitFor();
  const readKc = async () => (await kcInput.inputValue()).trim();
  const text = (sel) => page.evaluate((s) => document.querySelector(s)?.innerText ?? "", sel);
  const toasts = () => page.evaluate(() => document.querySelectorAll(".toast-body").length);

  // The metrics table names the epsilon it was computed for: wait for it, then for the
  // outputs to leave their pending state; then time how long the plots take after it.
  const settled = async (eps) => {
    await page.waitForFunction(
      (e) => { const m = document.querySelector("#metrics"); return m && m.innerText.includes(`vs ${e}`); },
      eps, { timeout: 240_000 });  // the first request builds LPIPS (app runs with --no-warmup)
    const t0 = Date.now();
    await page.waitForFunction(
      (e) => [...document.querySelectorAll("#halting-plot .gtitle, #curve-plot .gtitle")]
        .filter((t) => t.textContent.includes(e)).length === 1 &&
        document.querySelector("#curve-plot .gtitle")?.textContent.includes("KC-hat vs epsilon"),
      eps, { timeout: 30_000 });
    const lag = Date.now() - t0;
    await page.waitForFunction(() => document.querySelectorAll(".pending").length === 0, null, { timeout: 60_000 });
    return { kc: await readKc(), plotLagMs: lag };
  };

  // 0. First view: nothing that reads as a result.
  await page.waitForSelector("#halting-plot .main-svg", { timeout: 30_000 }).catch(() => {});
  result.kc_initial = await readKc();
  check("no_number_before_input", result.kc_initial === "", `KC-hat box shows ${JSON.stringify(result.kc_initial)}`);
  check("hint_before_input", (await text("#notices")).includes("Upload an image"));
  await page.screenshot({ path: path.join(outDir, "00_first_view.png"), fullPage: true });

  // 1. Load an example.
  const range = page.locator("#epsilon-slider input[type=range]");
  result.epsilon_before = await range.inputValue();
  await page.locator("button.gallery-item", { has: page.locator(`img[src*="${path.basename(image)}"]`) })
    .first().click();
  let s = await settled(result.epsilon_before);
  result.kc_before = s.kc;
  result.plot_lag_ms = s.plotLagMs;
  check("example_gives_a_count", /^\d+$/.test(result.kc_before), result.kc_before);
  result.halting_title_fits = await page.evaluate(() => {
    const t = document.querySelector("#halting-plot .gtitle").getBoundingClientRect();
    const c = document.querySelector("#halting-plot").getBoundingClientRect();
    return t.left >= c.left - 1 && t.right <= c.right + 1;
  });
  check("halting_title_fits", result.halting_title_fits);
  check("one_sentence_verdict", /(of \d+ tokens reconstruct|Out of reach|Not met)/.test(await text("#metrics")));
  await page.screenshot({ path: path.join(outDir, "01_example_loaded.png"), fullPage: true });

  // 2. Move the epsilon slider to its maximum with the keyboard (fires input + change).
  await range.focus();
  await page.keyboard.press("End");
  await range.dispatchEvent("change");
  result.epsilon_after = await range.inputValue();
  s = await settled(result.epsilon_after);
  result.kc_after = s.kc;
  check("slider_changes_the_count", result.kc_after !== result.kc_before && /^\d+$/.test(result.kc_after),
        `${result.kc_before} -> ${result.kc_after}`);
  await page.screenshot({ path: path.join(outDir, "02_epsilon_moved.png"), fullPage: true });

  // 3. A bad file: outputs cleared, the error once, no toast.
  await page.locator("#input-image button[aria-label='Remove Image']").first().click();
  await page.waitForFunction(() => document.querySelector("#notices")?.innerText.includes("Upload an image"));
  await page.locator("#input-image input[type=file]").setInputFiles(badFile);
  await page.waitForFunction(() => document.querySelector("#notices")?.innerText.includes("Cannot read"),
                             null, { timeout: 60_000 });
  await page.waitForFunction(() => document.querySelectorAll(".pending").length === 0, null, { timeout: 60_000 });
  await page.waitForTimeout(500);  // a toast, if any, would be up by now
  result.after_bad = {
    kc: await readKc(), metrics: (await text("#metrics")).trim(), toasts: await toasts(),
    error_mentions: await page.evaluate(() => document.body.innerText.split("Cannot read").length - 1),
  };
  check("bad_file_clears_outputs", result.after_bad.kc === "" && result.after_bad.metrics === "", result.after_bad);
  check("bad_file_error_shown_once", result.after_bad.error_mentions === 1 && result.after_bad.toasts === 0,
        result.after_bad);
  await page.screenshot({ path: path.join(outDir, "03_bad_file.png"), fullPage: true });

  // 4. A good upload afterwards: results, no error left over.
  await page.locator("#input-image button[aria-label='Remove Image']").first().click().catch(() => {});
  await page.locator("#input-image input[type=file]").setInputFiles(image);
  s = await settled(result.epsilon_after);
  result.kc_reupload = s.kc;
  check("recovers_after_bad_file", s.kc === result.kc_after && !(await text("#notices")).includes("Cannot read"),
        { kc: s.kc, notices: await text("#notices") });
  await page.screenshot({ path: path.join(outDir, "04_reuploaded.png"), fullPage: true });
  result.page_errors = pageErrors;
  result.ok = Object.values(result.checks).every((v) => v === true);
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
