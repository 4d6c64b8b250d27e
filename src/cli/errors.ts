/** CLI errors: a usage mistake (exit status 2, with the command's help hint). */
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

export class UsageError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_USAGE";
  constructor(
    readonly command: string,
    message: string,
  ) {
    super("ERR_USBVIRT_USAGE", message);
  }
}
registerErrorClass(UsageError);
