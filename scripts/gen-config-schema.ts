/**
 * Writes schema/usbvirt.schema.json, the JSON Schema of a `usbvirt serve` config file, from the valibot
 * schema the CLI checks with (src/cli/config.ts), so editors and the CLI agree. Run `npm run -s schema`
 * after changing that schema; test/cli/config-schema-file.test.ts fails while the checked-in file is stale.
 * Checks JSON Schema cannot say (CIDR ranges, selector syntax, size bounds) stay runtime-only; their shape
 * is in the schema as patterns.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type ConversionConfig, type JsonSchema, toJsonSchema } from "@valibot/to-json-schema";
import { DeviceEntryJsonShape, DeviceEntrySchema, ServeConfigSchema } from "../src/cli/config.js";

export const SCHEMA_FILE = join(
  dirname(fileURLToPath(import.meta.url)),
  "..",
  "schema",
  "usbvirt.schema.json",
);

export function configJsonSchema(): JsonSchema {
  const config: ConversionConfig = {
    target: "draft-07",
    errorMode: "throw",
    ignoreActions: ["check", "raw_check"],
    // A devices entry is chosen by its JSON type at run time (for errors that name the field); as JSON Schema it is a union.
    overrideSchema: ({ valibotSchema }) => {
      if (valibotSchema !== DeviceEntrySchema) return undefined;
      const { $schema: _nested, ...entry } = toJsonSchema(DeviceEntryJsonShape, {
        ...config,
        overrideSchema: undefined,
      });
      return entry;
    },
  };
  const schema = toJsonSchema(ServeConfigSchema, config);
  // The converter files the lazy devices entry under $defs even when overridden; nothing refers to it.
  if (JSON.stringify(schema).includes('"$ref"')) throw new Error("unexpected $ref in the config schema");
  const { $defs: _unused, ...rest } = schema;
  return rest;
}

export function configJsonSchemaText(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(SCHEMA_FILE, configJsonSchemaText());
  // The file is checked in: lay it out as the project's formatter (Biome) would, so `npm run lint` passes.
  execFileSync("npx", ["biome", "format", "--write", SCHEMA_FILE], { stdio: "inherit" });
  process.stdout.write(`wrote ${SCHEMA_FILE}\n`);
}
