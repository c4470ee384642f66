/**
 * Transfers on a channel's wire, both ways: how a large envelope becomes a
 * transfer (attachments at aligned offsets, then the packed head), how one
 * chunk frame is built in place around its bytes, and how a completed
 * transfer is decoded back into the envelope it carries. The chunking,
 * digests and reassembly themselves live in `chunk.ts`; this module is the
 * part that knows the envelope's msgpack layout.
 *
 * @module
 */
import {
  ALIGN,
  type Extracted,
  layoutAttachments,
  type Reassembler,
  restoreAttachments,
} from "./chunk.ts";
import { decode, encode } from "./codec.ts";
import { DATA_KINDS, type Envelope, type Limits, validateEnvelope } from "./envelope.ts";
import { FrameError } from "./errors.ts";

/** A large envelope on its way out: byte segments that are cut into chunks in order. */
export interface TransferItem {
  /** The receiver's address. */
  to: string;
  /** The transfer's bytes, in order: attachments and padding, then the head. */
  segments: Uint8Array[];
  /** Total bytes of all segments. */
  total: number;
  /** Bytes of the packed head, the last segment. */
  head: number;
}

/** A chunk envelope: every field but the payload, plus the padding that aligns the chunk bytes. */
export type ChunkEnvelope = Partial<Envelope> & { pad?: string };

/** Room kept in front of chunk data for the envelope fields. */
export const PREFIX_ROOM = 2048;
const PAYLOAD_KEY = new Uint8Array([0xa7, ...new TextEncoder().encode("payload")]);

function asBytes(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * The transfer of `env` whose payload had its large typed arrays taken out:
 * the arrays' bytes at their aligned offsets (zeros between), then the head,
 * the envelope packed with placeholders and the attachment refs.
 */
export function attachmentTransfer(env: Envelope, extracted: Extracted): TransferItem {
  const { refs, end } = layoutAttachments(extracted.arrays);
  const head = encode({ ...env, payload: extracted.payload, att: refs }).slice();
  const segments: Uint8Array[] = [];
  let at = 0;
  extracted.arrays.forEach((a, i) => {
    if (refs[i][1] > at) segments.push(new Uint8Array(refs[i][1] - at));
    segments.push(asBytes(a));
    at = refs[i][1] + a.byteLength;
  });
  if (end > at) segments.push(new Uint8Array(end - at));
  segments.push(head);
  return { to: env.to, segments, total: end + head.byteLength, head: head.byteLength };
}

/**
 * Packs `env` in front of the `length` chunk bytes that stand at
 * {@linkcode PREFIX_ROOM} in `frame`, and returns the whole frame (a view of
 * `frame`). Throws a `RangeError` when the fields do not fit the room.
 */
export function packChunkFrame(frame: Uint8Array, env: ChunkEnvelope, length: number): Uint8Array {
  // The envelope fields are packed as a map and "payload" (bin 32) is spliced in after them,
  // so the chunk bytes are copied once, into this buffer. A padding field puts the chunk
  // bytes at an aligned offset of the frame, so that the receiver can keep a one-chunk
  // transfer where it landed and view its typed arrays in place.
  env.pad = "";
  let fields = encode(env);
  const misaligned = (fields.byteLength + PAYLOAD_KEY.byteLength + 5) % ALIGN;
  if (misaligned !== 0) {
    env.pad = " ".repeat(ALIGN - misaligned);
    fields = encode(env);
  }
  const start = PREFIX_ROOM - 5 - PAYLOAD_KEY.byteLength - fields.byteLength;
  if (start < 0) throw new RangeError("Cannot send chunk: envelope fields too long");
  frame.set(fields, start);
  if (frame[start] === 0xde) {
    const n = ((frame[start + 1] << 8) | frame[start + 2]) + 1;
    frame[start + 1] = n >> 8;
    frame[start + 2] = n & 0xff;
  } else if ((frame[start] & 0xf0) === 0x80 && frame[start] !== 0x8f) {
    frame[start]++;
  } else {
    throw new TypeError(
      `Cannot send chunk: unexpected map header 0x${frame[start].toString(16)}`,
    );
  }
  frame.set(PAYLOAD_KEY, PREFIX_ROOM - 5 - PAYLOAD_KEY.byteLength);
  frame[PREFIX_ROOM - 5] = 0xc6;
  new DataView(frame.buffer).setUint32(PREFIX_ROOM - 4, length);
  return frame.subarray(start, PREFIX_ROOM + length);
}

/**
 * Adds one chunk envelope to `reassembler`. Once its transfer is complete,
 * returns the data envelope it carries, checked like any envelope and against
 * the chunk's own headers; undefined while chunks are missing. Throws a
 * {@linkcode FrameError} for a transfer that fails a check.
 */
export function unchunk(
  env: Envelope,
  reassembler: Reassembler,
  limits: Limits,
): Envelope | undefined {
  const done = reassembler.add(env.chunk!, env.payload as Uint8Array);
  if (!done) return undefined;
  const { bytes, head } = done;
  const start = bytes.byteLength - head;
  let raw: Record<string, unknown>;
  try {
    raw = decode(bytes.subarray(start)) as Record<string, unknown>;
  } catch (err) {
    throw new FrameError("malformed", `Malformed chunked message: ${(err as Error).message}`);
  }
  if (raw !== null && typeof raw === "object" && "att" in raw) {
    raw.payload = restoreAttachments(raw.payload, raw.att, bytes, start);
    delete raw.att;
  }
  const inner = validateEnvelope(raw, limits);
  if (
    !DATA_KINDS.has(inner.kind) || inner.from !== env.from || inner.to !== env.to ||
    inner.run !== env.run
  ) {
    throw new FrameError(
      "invalid",
      `Chunked message ${env.chunk!.xid} does not match its chunk headers`,
    );
  }
  return inner;
}
