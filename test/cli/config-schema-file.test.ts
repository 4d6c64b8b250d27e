/**
 * schema/usbvirt.schema.json (serve), schema/usbvirt-redirect.schema.json (redirect) and
 * schema/usbvirt-attach.schema.json (attach) are generated from the valibot schemas the CLI checks with;
 * this fails when a checked-in file is stale (run `npm run -s schema`), and checks each file says what an
 * editor needs. contrib's example redirect and attach configs pass.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { configJsonSchema, SCHEMA_FILES } from "../../scripts/gen-config-schema.js";
import { ATTACH_SETTINGS } from "../../src/cli/attach-config.js";
import { checkConfig } from "../../src/cli/config.js";
import { REDIRECT_SETTINGS } from "../../src/cli/redirect-config.js";

const ROOT = join(import.meta.dirname, "../..");

describe.each(SCHEMA_FILES.map((f) => [f.command, f] as const))("the config schema of %s", (_, entry) => {
  it("matches the schema the CLI checks with (else: npm run -s schema)", async () => {
    const onDisk = JSON.parse(await readFile(entry.file, "utf8"));
    expect(onDisk).toEqual(configJsonSchema(entry.schema));
  });

  it("is a closed draft-07 object with every setting and its flag's counterpart", async () => {
    const schema = JSON.parse(await readFile(entry.file, "utf8"));
    expect(schema.$schema).toBe("http://json-schema.org/draft-07/schema#");
    expect(schema.title).toBe(`usbvirt ${entry.command} configuration`);
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties).sort()).toEqual(
      ["$schema", ...Object.keys(entry.flagOfKey)].sort(),
    );
  });
});

describe("the config schemas' own fields", () => {
  it("serve: port is an integer, bind a string", async () => {
    const schema = JSON.parse(await readFile(SCHEMA_FILES[0]!.file, "utf8"));
    expect(schema.properties.port).toMatchObject({ type: "integer", minimum: 0, maximum: 65535 });
    expect(schema.properties.bind.type).toBe("string");
  });

  it("redirect: one device (a selector or a spec object), listen and connect as strings", async () => {
    const schema = JSON.parse(await readFile(SCHEMA_FILES[1]!.file, "utf8"));
    expect(schema.properties.device.anyOf.map((b: { type?: string }) => b.type)).toEqual([
      "string",
      undefined,
    ]);
    expect(schema.properties.device.anyOf[0].description).toMatch(/usbip:\/\/HOST\[:PORT\]\/BUSID/);
    expect(schema.properties.listen.type).toBe("string");
    expect(schema.properties.connect.type).toBe("string");
  });

  it("contrib's example redirect config passes redirect's schema", async () => {
    const file = join(ROOT, "contrib", "usbvirt-redirect.example.json");
    const example = JSON.parse(await readFile(file, "utf8"));
    expect(checkConfig(REDIRECT_SETTINGS, example, file)).toEqual(example);
  });

  it("contrib's example attach config passes attach's schema", async () => {
    const file = join(ROOT, "contrib", "usbvirt-attach.example.json");
    const example = JSON.parse(await readFile(file, "utf8"));
    expect(checkConfig(ATTACH_SETTINGS, example, file)).toEqual(example);
  });
});
