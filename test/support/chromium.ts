/**
 * Headless Chromium for the page tests (Debian's `chromium`; CI installs it): dump the DOM after the
 * page's scripts ran for a virtual-time budget, and write a screenshot. `chromium()` says why when the
 * binary is absent (test/support/tools.ts: the tests skip with that reason, or fail where tools are required).
 */
import { execFile } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { command, type Tool } from "./tools.js";

const CANDIDATES = ["chromium", "chromium-browser", "google-chrome"];

/** The browser ($CHROMIUM, else the first of CANDIDATES on the PATH), or why there is none. */
export function chromium(): Tool<string> {
  const chosen = process.env.CHROMIUM;
  return command(chosen ? [chosen, ...CANDIDATES] : CANDIDATES, "apt-get install chromium");
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
