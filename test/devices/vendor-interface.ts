/** The device layout many descriptor tests need: one configuration, one vendor-class interface, these endpoints. */
import type { ConfigurationSpec, EndpointSpec } from "../../src/devices/emulated/descriptors.js";

export function oneVendorInterface(endpoints: readonly EndpointSpec[]): ConfigurationSpec[] {
  return [
    {
      configurationValue: 1,
      interfaces: [
        {
          interfaceNumber: 0,
          alternates: [
            {
              alternateSetting: 0,
              interfaceClass: 0xff,
              interfaceSubClass: 0,
              interfaceProtocol: 0,
              endpoints,
            },
          ],
        },
      ],
    },
  ];
}
