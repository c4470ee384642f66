/**
 * Reading and writing the safetensors format: an 8-byte little-endian header
 * length N, N bytes of JSON header (`{"name": {"dtype", "shape", "data_offsets":
 * [begin, end]}, "__metadata__": {string: string}}`, padded with spaces), then
 * the tensor bytes (little-endian, row-major). Offsets are relative to the
 * start of the byte buffer after the header.
 *
 * Every malformed file (truncated, bad JSON, offsets out of range or
 * overlapping, shape and byte size disagreeing) raises a
 * {@linkcode SafetensorsError} that names the problem.
 *
 * @module
 */
import { inPieces, PACE_BYTES } from "./_background.ts";

/** Raised for a malformed or unreadable safetensors file. */
export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

/** Bytes per element of each safetensors dtype. */
export const DTYPE_SIZES: Readonly<Record<string, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
});

/** A tensor to write. */
export interface TensorInput {
  /** A safetensors dtype; F32 for Float32Array data. */
  dtype: string;
  /** Row-major shape. */
  shape: number[];
  /** The elements (a typed array whose byte length matches dtype and shape). */
  data: ArrayBufferView;
}

/** A tensor read from a file: raw little-endian bytes plus dtype and shape. */
export interface TensorEntry {
  /** The safetensors dtype. */
  dtype: string;
  /** Row-major shape. */
  shape: number[];
  /** The tensor's bytes (a view into the file buffer). */
  bytes: Uint8Array;
}

/** A decoded safetensors file. */
export interface SafetensorsFile {
  /** Tensors by name, in header order. */
  tensors: Map<string, TensorEntry>;
  /** The `__metadata__` string map (empty when absent). */
  metadata: Record<string, string>;
}

/** Largest header accepted (the reference implementation's limit). */
const MAX_HEADER = 100_000_000;

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Options of {@linkcode encodeSafetensors}. */
export interface EncodeOptions {
  /**
   * Allocates the output (zero-filled, exactly `bytes` long), e.g. in a
   * SharedArrayBuffer that other threads read without a copy. Default: a new
   * `Uint8Array`.
   */
  alloc?: (bytes: number) => Uint8Array;
  /** Called after every {@linkcode PACE_BYTES} copied (a background thread's CPU budget). */
  pace?: () => void;
}

/**
 * Encodes tensors (in the given order) and metadata into safetensors bytes.
 *
 * @example
 * ```ts
 * import { decodeSafetensors, encodeSafetensors } from "./safetensors.ts";
 * const bytes = encodeSafetensors({ w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * console.log(decodeSafetensors(bytes).tensors.get("w")?.shape); // [2]
 * ```
 */
export function encodeSafetensors(
  tensors: Record<string, TensorInput>,
  metadata: Record<string, string> = {},
  options: EncodeOptions = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new TypeError(`Cannot encode safetensors: metadata "${k}" is not a string`);
      }
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") {
      throw new TypeError("Cannot encode safetensors: tensor name __metadata__ is reserved");
    }
    const size = DTYPE_SIZES[t.dtype];
    if (size === undefined) {
      throw new TypeError(`Cannot encode safetensors: unknown dtype ${t.dtype} for ${name}`);
    }
    const expected = numel(t.shape) * size;
    if (t.data.byteLength !== expected) {
      throw new RangeError(
        `Cannot encode safetensors: ${name} has ${t.data.byteLength} bytes, shape [${t.shape}] ` +
          `of ${t.dtype} needs ${expected}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + expected] };
    parts.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    offset += expected;
  }
  let json = JSON.stringify(header);
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  const jsonBytesLen = new TextEncoder().encode(json).length;
  json += " ".repeat((8 - ((8 + jsonBytesLen) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const length = 8 + headerBytes.length + offset;
  const out = options.alloc?.(length) ?? new Uint8Array(length);
  if (out.length !== length) {
    throw new RangeError(
      `Cannot encode safetensors: alloc gave ${out.length} bytes, not ${length}`,
    );
  }
  new DataView(out.buffer, out.byteOffset, out.byteLength).setBigUint64(
    0,
    BigInt(headerBytes.length),
    true,
  );
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const p of parts) {
    const start = at;
    inPieces(p.length, PACE_BYTES, options.pace, (a, b) => out.set(p.subarray(a, b), start + a));
    at += p.length;
  }
  return out;
}

function fail(where: string, detail: string): never {
  throw new SafetensorsError(`Invalid safetensors file${where ? ` ${where}` : ""}: ${detail}`);
}

/**
 * Decodes and validates safetensors bytes. `source` names the file in errors.
 *
 * @throws {SafetensorsError} on any malformed input
 */
export function decodeSafetensors(bytes: Uint8Array, source = ""): SafetensorsFile {
  if (bytes.length < 8) {
    fail(source, `file is ${bytes.length} bytes, shorter than the 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n64 = view.getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER)) fail(source, `header length ${n64} exceeds ${MAX_HEADER}`);
  const n = Number(n64);
  if (8 + n > bytes.length) {
    fail(source, `truncated: header needs ${n} bytes but only ${bytes.length - 8} follow`);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (err) {
    fail(source, `header is not valid JSON: ${err instanceof Error ? err.message : err}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail(source, "header is not a JSON object");
  }
  const data = bytes.subarray(8 + n);
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorEntry>();
  const ranges: [number, number, string][] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        fail(source, "__metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") fail(source, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    if (typeof raw !== "object" || raw === null) fail(source, `entry ${name} is not an object`);
    const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
    if (typeof dtype !== "string" || DTYPE_SIZES[dtype] === undefined) {
      fail(source, `tensor ${name} has unknown dtype ${JSON.stringify(dtype)}`);
    }
    if (
      !Array.isArray(shape) ||
      !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
    ) {
      fail(source, `tensor ${name} has an invalid shape ${JSON.stringify(shape)}`);
    }
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      !offs.every((d) => Number.isSafeInteger(d) && (d as number) >= 0) ||
      (offs[0] as number) > (offs[1] as number)
    ) {
      fail(source, `tensor ${name} has invalid data_offsets ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    const expected = numel(shape as number[]) * DTYPE_SIZES[dtype];
    if (end - begin !== expected) {
      fail(
        source,
        `tensor ${name} spans ${
          end - begin
        } bytes but shape [${shape}] of ${dtype} needs ${expected}`,
      );
    }
    if (end > data.length) {
      fail(
        source,
        `truncated: tensor ${name} ends at byte ${end} of a ${data.length}-byte data section`,
      );
    }
    ranges.push([begin, end, name]);
    tensors.set(name, { dtype, shape: shape as number[], bytes: data.subarray(begin, end) });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let covered = 0;
  for (const [begin, end, name] of ranges) {
    if (begin < covered) fail(source, `tensor ${name} overlaps another tensor`);
    if (begin > covered) fail(source, `gap in the data section before tensor ${name}`);
    covered = end;
  }
  if (covered !== data.length) {
    fail(source, `data section has ${data.length - covered} trailing bytes no tensor covers`);
  }
  return { tensors, metadata };
}

/**
 * The elements of an F32 tensor as a fresh Float32Array (F64, F16 and BF16 are converted).
 *
 * @throws {SafetensorsError} for other dtypes
 */
export function tensorToFloat32(entry: TensorEntry, name = "tensor"): Float32Array {
  const n = numel(entry.shape);
  const copy = entry.bytes.slice();
  const dv = new DataView(copy.buffer);
  switch (entry.dtype) {
    case "F32":
      return new Float32Array(copy.buffer, 0, n);
    case "F64":
      return Float32Array.from(new Float64Array(copy.buffer, 0, n));
    case "BF16": {
      const out = new Float32Array(n);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      return out;
    }
    case "F16": {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(dv.getUint16(2 * i, true));
      return out;
    }
    default:
      throw new SafetensorsError(`Cannot read ${name} as floats: dtype ${entry.dtype}`);
  }
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/**
 * Reads and validates a safetensors file.
 *
 * @throws {SafetensorsError} when the file is missing, unreadable or malformed
 */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new SafetensorsError(`Cannot read checkpoint: ${path} does not exist`);
    }
    if (err instanceof Deno.errors.IsADirectory) {
      throw new SafetensorsError(`Cannot read checkpoint: ${path} is a directory`);
    }
    throw new SafetensorsError(
      `Cannot read checkpoint: ${path}: ${err instanceof Error ? err.message : err}`,
    );
  }
  return decodeSafetensors(bytes, path);
}

/**
 * Writes tensors to `path` atomically (a temporary file in the same folder, then rename).
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorInput>,
  metadata: Record<string, string> = {},
): Promise<void> {
  const bytes = encodeSafetensors(tensors, metadata);
  const tmp = `${path}.tmp-${Deno.pid}-${Date.now()}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}
