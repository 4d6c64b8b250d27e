/**
 * Source scans for test/usb/vocabulary.test.ts: which imports of a src/usb file leave the folder, and
 * where a file outside src/usb defines or spells a chapter-9 number. Comments are blanked first.
 */

/** Blank block and line comments (strings with comment markers are rare enough in src/ to ignore). */
function withoutComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/(^|[^:"'`])\/\/.*$/gm, "$1");
}

/** Module specifiers of a src/usb file that are not a sibling ("./x.js"). */
export function usbImportsOutside(source: string): string[] {
  const specs = [...withoutComments(source).matchAll(/\b(?:from|import)\s*\(?\s*["']([^"']+)["']/g)].map(
    (m) => m[1]!,
  );
  return specs.filter((s) => !/^\.\/[\w.-]+$/.test(s));
}

const NUMBER = String.raw`(?:0x[0-9a-fA-F]+|\d+)`;
const NONZERO = String.raw`(?:0x0*[1-9a-fA-F][0-9a-fA-F]*|0*[1-9]\d*)`;
const STANDARD_NAMES =
  "GET_STATUS|CLEAR_FEATURE|SET_FEATURE|SET_ADDRESS|GET_DESCRIPTOR|SET_DESCRIPTOR|GET_CONFIGURATION|SET_CONFIGURATION|GET_INTERFACE|SET_INTERFACE|SYNCH_FRAME";

/** Each pattern is one way a chapter-9 number was defined or spelled outside src/usb. */
const PATTERNS: readonly RegExp[] = [
  // a request code under its own name: REQ_SET_ADDRESS = 5, USB_REQ_…, SET_ADDRESS = { … request: 5 }
  // (a bare `SET_CONFIGURATION: 6` is usbredir's own packet type, not chapter 9's request)
  new RegExp(
    String.raw`\b\w*(?:${STANDARD_NAMES})\s*=\s*(?:${NUMBER}|\{[^}]*\b(?:request|bRequest)\s*:\s*${NUMBER})`,
  ),
  // descriptor types and request-type bits under their own names
  new RegExp(
    String.raw`\b(?:USB_DT_\w+|RT_\w+|\w*(?:REQUEST|SETUP)_(?:DIR|TYPE)_\w+|ENDPOINT_DIR_\w+|ENDPOINT_NUMBER_MASK|RECIPIENT_\w+|FEAT(?:URE)?_\w+)\s*=\s*${NUMBER}`,
  ),
  /\b(?:StandardRequest|DescriptorType)\s*=\s*\{/,
  // a setup packet or a comparison spelled in numbers (zero alone is a scratch packet's initial value)
  new RegExp(String.raw`\b(?:bRequest|bmRequestType)\s*(?::|===|!==)\s*${NONZERO}\b`),
  new RegExp(String.raw`\b(?:request|requestType)\s*(?:===|!==)\s*${NUMBER}\b`),
  new RegExp(String.raw`\bbmRequestType\s*:\s*${NUMBER}\s*,\s*bRequest\s*:\s*${NONZERO}\b`),
];

/** The lines of `source` (outside src/usb) that define or spell a chapter-9 number. */
export function chapter9Definitions(source: string): string[] {
  const text = withoutComments(source);
  const hits: string[] = [];
  for (const re of PATTERNS) {
    const g = new RegExp(re.source, "g");
    for (const m of text.matchAll(g)) hits.push(m[0].replace(/\s+/g, " "));
  }
  return hits;
}
