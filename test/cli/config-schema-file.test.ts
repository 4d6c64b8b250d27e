/**
 * schema/usbvirt.schema.json is generated from the valibot schema the CLI checks with; this fails when the
 * checked-in file is stale (run `npm run -s schema`), and checks the file says what an editor needs.
 */
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { configJsonSchema, SCHEMA_FILE } from "../../scripts/gen-config-schema.js";
import { FLAG_OF_KEY } from "../../src/cli/config.js";

describe("schema/usbvirt.schema.json", () => {
  it("matches the schema the CLI checks with (else: npm run -s schema)", async () => {
    const onDisk = JSON.parse(await readFile(SCHEMA_FILE, "utf8"));
    expect(onDisk).toEqual(configJsonSchema());
  });

  it("is a closed draft-07 object with every setting and its flag's counterpart", async () => {
    const schema = JSON.parse(await readFile(SCHEMA_FILE, "utf8"));
    expect(schema.$schema).toBe("http://json-schema.org/draft-07/schema#");
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties).sort()).toEqual(["$schema", ...Object.keys(FLAG_OF_KEY)].sort());
    expect(schema.properties.port).toMatchObject({ type: "integer", minimum: 0, maximum: 65535 });
    expect(schema.properties.bind.type).toBe("string");
  });
});
