/**
 * Vendor/product ids of the emulated devices. 0x1209 is the pid.codes open-hardware vendor id; product ids
 * 0x0001..0x0010 there are its test range ("pid.codes Test PID"), meant for development and never for
 * shipped hardware, which is what an emulated device is. No real device answers to these pairs, so a guest
 * driver cannot mistake an emulated device for hardware it knows.
 */
export const PID_CODES_VENDOR_ID = 0x1209;
export const LOOPBACK_PRODUCT_ID = 0x0001;
export const KEYBOARD_PRODUCT_ID = 0x0002;
export const STORAGE_PRODUCT_ID = 0x0003;
/** bcdDevice of every emulated device: release 1.00. */
export const EMULATED_BCD_DEVICE = 0x0100;
export const EMULATED_MANUFACTURER = "usbvirt";
