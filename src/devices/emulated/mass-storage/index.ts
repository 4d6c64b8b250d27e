/** Public surface of the emulated mass-storage device: the device, its transport codec, SCSI plan and stores. */
export {
  BotRequest,
  CBW_SIGNATURE,
  CBW_SIZE,
  CSW_SIGNATURE,
  CSW_SIZE,
  type Csw,
  CswStatus,
  decodeCsw,
  encodeCbw,
  encodeCsw,
  parseCbw,
} from "./bot.js";
export {
  DEFAULT_STORAGE_SERIAL,
  MassStorageDevice,
  type MassStorageOptions,
  STORAGE_BULK_IN,
  STORAGE_BULK_OUT,
  STORAGE_INTERFACE,
} from "./device.js";
export { fixedSense, planCommand, ScsiOp, type Sense } from "./scsi.js";
export { BLOCK_SIZE, type BlockStore, DEFAULT_STORE_SIZE, FileStore, MemoryStore } from "./store.js";
