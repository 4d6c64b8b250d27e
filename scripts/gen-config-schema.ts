/**
 * Writes the JSON Schemas of the commands' config files from the valibot schemas the CLI checks with, so
 * editors and the CLI agree: schema/usbvirt.schema.json (`usbvirt serve`, src/cli/config.ts),
 * schema/usbvirt-redirect.schema.json (`usbvirt redirect`, src/cli/redirect-config.ts) and
 * schema/usbvirt-attach.schema.json (`usbvirt attach`, src/cli/attach-config.ts). Run
 * `npm run -s schema` after changing either; test/cli/config-schema-file.test.ts fails while a checked-in
 * file is stale. Checks JSON Schema cannot say (CIDR ranges, selector syntax, size bounds) stay
 * runtime-only; their shape is in the schema as patterns.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type ConversionConfig, type JsonSchema, toJsonSchema } from "@valibot/to-json-schema";
import type * as v from "valibot";
import { ATTACH_SETTINGS } from "../src/cli/attach-config.js";
import { JSON_SHAPES, SERVE_SETTINGS } from "../src/cli/config.js";
import { REDIRECT_SETTINGS } from "../src/cli/redirect-config.js";

const SCHEMA_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "schema");

/** Each command whose config file has a schema, and where it is written. */
export const SCHEMA_FILES: readonly {
  readonly command: string;
  readonly file: string;
  readonly schema: v.GenericSchema;
  readonly flagOfKey: Readonly<Record<string, string>>;
}[] = [
  { ...SERVE_SETTINGS, file: join(SCHEMA_DIR, "usbvirt.schema.json") },
  { ...REDIRECT_SETTINGS, file: join(SCHEMA_DIR, "usbvirt-redirect.schema.json") },
  { ...ATTACH_SETTINGS, file: join(SCHEMA_DIR, "usbvirt-attach.schema.json") },
];

/** serve's file, by the name the tests used before redirect had one. */
export const SCHEMA_FILE = SCHEMA_FILES[0]!.file;

export function configJsonSchema(schema: v.GenericSchema = SCHEMA_FILES[0]!.schema): JsonSchema {
  const config: ConversionConfig = {
    target: "draft-07",
    errorMode: "throw",
    // A checked device spec is cast to its type (a transform that changes nothing JSON Schema can see).
    ignoreActions: ["check", "raw_check", "transform"],
    // A device entry is chosen by its JSON type at run time (for errors that name the field); as JSON Schema it is a union.
    overrideSchema: ({ valibotSchema }) => {
      const shape = JSON_SHAPES.get(valibotSchema as v.GenericSchema);
      if (shape === undefined) return undefined;
      const { $schema: _nested, ...entry } = toJsonSchema(shape, { ...config, overrideSchema: undefined });
      return entry;
    },
  };
  const json = toJsonSchema(schema, config);
  // The converter files the lazy device entry under $defs even when overridden; nothing refers to it.
  if (JSON.stringify(json).includes('"$ref"')) throw new Error("unexpected $ref in a config schema");
  const { $defs: _unused, ...rest } = json;
  return rest;
}

export function configJsonSchemaText(schema?: v.GenericSchema): string {
  return `${JSON.stringify(configJsonSchema(schema), null, 2)}\n`;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const { file, schema } of SCHEMA_FILES) {
    writeFileSync(file, configJsonSchemaText(schema));
    // The file is checked in: lay it out as the project's formatter (Biome) would, so `npm run lint` passes.
    execFileSync("npx", ["biome", "format", "--write", file], { stdio: "inherit" });
    process.stdout.write(`wrote ${file}\n`);
  }
}
