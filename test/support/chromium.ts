/**
 * Headless Chromium for the page tests (Debian's `chromium`; CI installs it): dump the DOM after the
 * page's scripts ran for a virtual-time budget, and write a screenshot. `chromium()` is null when the
 * binary is absent, so the tests can skip with a message.
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const CANDIDATES = ["chromium", "chromium-browser", "google-chrome"];

/** The browser's path, or null. */
export function chromium(): string | null {
  for (const name of [process.env.CHROMIUM, ...CANDIDATES]) {
    if (name === undefined || name === "") continue;
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || null;
    } catch {
      // not this one
    }
  }
  return null;
}

/** Where screenshots go: $USBVIRT_TEST_OUTPUT (e.g. the CI log folder) or test-output/ (git-ignored). */
export function outputDir(): string {
  const dir = process.env.USBVIRT_TEST_OUTPUT ?? join(import.meta.dirname, "../../test-output");
  mkdirSync(dir, { recursive: true });
  return dir;
}

function runBrowser(browser: string, args: readonly string[]): Promise<string> {
  const base = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"];
  return new Promise((resolve, reject) => {
    execFile(browser, [...base, ...args], { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 }, (err, out, e) => {
      if (err !== null) reject(new Error(`${browser} failed: ${err.message}\n${e}`));
      else resolve(out);
    });
  });
}

/** The DOM of `url` after its scripts ran for `budgetMs` of virtual time. */
export function dumpDom(browser: string, url: string, budgetMs: number): Promise<string> {
  return runBrowser(browser, [`--virtual-time-budget=${budgetMs}`, "--dump-dom", url]);
}

/** A PNG of `url` (width x height) after `budgetMs` of virtual time. */
export async function screenshot(
  browser: string,
  url: string,
  file: string,
  budgetMs: number,
  size = "1400,500",
): Promise<void> {
  await runBrowser(browser, [
    `--virtual-time-budget=${budgetMs}`,
    `--window-size=${size}`,
    `--screenshot=${file}`,
    url,
  ]);
}
