/**
 * A channel's outgoing side and its flow control: small envelopes batched
 * into one frame per event-loop turn, large ones cut into chunk frames, all
 * in order through one queue that pauses while the socket holds more than
 * the high-water mark and resumes below the low-water mark. `drained`
 * lets a producer pace itself on the same marks. The channel decides what
 * to send; this module decides when the bytes reach the socket.
 *
 * @module
 */
import { DEFAULT_CHUNK_BYTES, digest128, extractAttachments, gather, rootDigest } from "./chunk.ts";
import { encode } from "./codec.ts";
import type { Envelope } from "./envelope.ts";
import {
  attachmentTransfer,
  type ChunkEnvelope,
  packChunkFrame,
  PREFIX_ROOM,
  type TransferItem,
} from "./_chunk_frames.ts";
import { type ConnectionOptions, wholeBytes } from "./_channel_options.ts";

type Timer = ReturnType<typeof setTimeout>;
type OutItem = Uint8Array | TransferItem;

/** msgpack array 32 header: a batch frame is an array of envelopes, its count patched in last. */
const ARRAY32 = 0xdd;
const HEADER = 5;

/** What the send queue needs of its channel. */
export interface SendQueueHost {
  /** Whether the channel is open; nothing is sent, and waits end, once it is not. */
  isOpen(): boolean;
  /** Bytes queued in the socket but not yet written. */
  bufferedAmount(): number;
  /** Hands one frame to the socket. */
  write(frame: Uint8Array): void;
  /** A fresh envelope of kind "chunk" for `to`, with its sequence number. */
  chunkEnvelope(to: string): ChunkEnvelope;
  /** The queue failed (a frame could not be built): the channel should close. */
  failed(error: unknown): void;
}

/** The ordered outgoing queue of one channel. */
export class SendQueue {
  #o: ConnectionOptions;
  #maxBatch: number;
  #host: SendQueueHost;
  #xid = 0;
  #frameBuf: Uint8Array | undefined;
  #batch = new Uint8Array(64 << 10);
  #batchLen = HEADER;
  #batchCount = 0;
  #flushQueued = false;
  #out: OutItem[] = [];
  #outBytes = 0;
  #pumping = false;
  #drainWaiters: (() => void)[] = [];
  #timers = new Set<Timer>();

  /** A queue for the tunables in `options`, batching at most `maxBatch` envelopes per frame. */
  constructor(options: ConnectionOptions, maxBatch: number, host: SendQueueHost) {
    this.#o = options;
    this.#maxBatch = maxBatch;
    this.#host = host;
  }

  /** Bytes waiting to go out: batched, queued, and in the socket's buffer. */
  get backlog(): number {
    return this.#batchLen - HEADER + this.#outBytes + this.#host.bufferedAmount();
  }

  /** Adds one packed envelope to the current batch. */
  append(bytes: Uint8Array): void {
    const maxBatch = this.#o.maxBatchBytes ?? 256 << 10;
    if (this.#batchLen + bytes.byteLength > maxBatch && this.#batchCount > 0) this.flush();
    const need = this.#batchLen + bytes.byteLength;
    if (need > this.#batch.byteLength) {
      const grown = new Uint8Array(Math.max(need, this.#batch.byteLength * 2));
      grown.set(this.#batch.subarray(0, this.#batchLen));
      this.#batch = grown;
    }
    this.#batch.set(bytes, this.#batchLen);
    this.#batchLen += bytes.byteLength;
    this.#batchCount++;
    if (this.#batchCount >= this.#maxBatch || this.#batchLen >= maxBatch) {
      this.flush();
    } else if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(() => {
        this.#flushQueued = false;
        this.flush();
      });
    }
  }

  /**
   * Queues one data envelope: batched when small, as chunks when it is large
   * or carries large binary attachments. Throws a `TypeError` when its
   * payload cannot be encoded.
   */
  post(env: Envelope): void {
    const chunkBytes = this.#o.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    const extracted = extractAttachments(env.payload, this.#o.attachBytes ?? 16 << 10);
    let bytes: Uint8Array;
    try {
      if (extracted) {
        this.transfer(attachmentTransfer(env, extracted));
        return;
      }
      bytes = encode(env);
    } catch (err) {
      throw new TypeError(`Cannot encode ${env.kind} to ${env.to}: ${(err as Error).message}`);
    }
    if (bytes.byteLength > chunkBytes) {
      const owned = bytes.slice();
      this.transfer({
        to: env.to,
        segments: [owned],
        total: owned.byteLength,
        head: owned.byteLength,
      });
      return;
    }
    this.append(bytes);
  }

  /** Queues a transfer behind everything batched so far. */
  transfer(item: TransferItem): void {
    this.flush();
    this.#enqueue(item);
  }

  /** Sends the current batch now, or queues it behind what is waiting. */
  flush(): void {
    if (this.#batchCount === 0 || !this.#host.isOpen()) return;
    const view = new DataView(this.#batch.buffer, this.#batch.byteOffset);
    this.#batch[0] = ARRAY32;
    view.setUint32(1, this.#batchCount);
    const frame = this.#batch.subarray(0, this.#batchLen);
    this.#batchLen = HEADER;
    this.#batchCount = 0;
    const high = this.#o.highWaterBytes ?? 8 << 20;
    if (!this.#pumping && this.#out.length === 0 && this.#host.bufferedAmount() < high) {
      this.#host.write(frame); // Deno copies on send, so the batch buffer is reused
    } else {
      this.#enqueue(frame.slice());
    }
  }

  /**
   * Resolves once everything queued has been handed to the socket and its
   * buffer is below the low-water mark, or once the channel is no longer open.
   */
  async drained(): Promise<void> {
    this.flush();
    while (this.#host.isOpen() && (this.#pumping || this.#out.length > 0)) {
      await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    }
    await this.#waitBelowLow();
  }

  /** Drops everything queued and ends every wait: the channel has closed. */
  close(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    this.#out = [];
    this.#outBytes = 0;
    this.#notifyDrain();
  }

  #enqueue(item: OutItem): void {
    this.#out.push(item);
    this.#outBytes += item instanceof Uint8Array ? item.byteLength : item.total;
    if (!this.#pumping) {
      this.#pumping = true;
      this.#pump().catch((err) => this.#host.failed(err));
    }
  }

  async #pump(): Promise<void> {
    try {
      while (this.#out.length > 0 && this.#host.isOpen()) {
        const item = this.#out.shift()!;
        if (item instanceof Uint8Array) {
          await this.#waitBelowHighWater();
          this.#outBytes -= item.byteLength;
          this.#host.write(item);
          continue;
        }
        await this.#sendTransfer(item);
      }
    } finally {
      // Cleared in the same turn as the last emptiness check: an item queued from a microtask
      // after the loop (an ask's reply, say) must start a new pump, not join one that has ended.
      this.#pumping = false;
      this.#notifyDrain();
    }
  }

  /** Sends one transfer as chunk frames, building each frame in one reused buffer. */
  async #sendTransfer(item: TransferItem): Promise<void> {
    const whole = item.total <= wholeBytes(this.#o);
    const chunkBytes = whole ? Math.max(1, item.total) : this.#o.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if ((this.#frameBuf?.byteLength ?? 0) < PREFIX_ROOM + chunkBytes) {
      this.#frameBuf = new Uint8Array(PREFIX_ROOM + chunkBytes);
    }
    const frame = this.#frameBuf!;
    const xid = this.#xid++;
    const count = Math.max(1, Math.ceil(item.total / chunkBytes));
    const digests: Uint8Array[] = [];
    for (let index = 0; index < count; index++) {
      await this.#waitBelowHighWater();
      if (!this.#host.isOpen()) return;
      const offset = index * chunkBytes;
      const length = Math.min(chunkBytes, item.total - offset);
      const data = frame.subarray(PREFIX_ROOM, PREFIX_ROOM + length);
      gather(item.segments, offset, data);
      const digest = digest128(data);
      digests.push(digest);
      const env = this.#host.chunkEnvelope(item.to);
      env.chunk = { xid, index, count, total: item.total, offset, head: item.head, digest };
      if (index === count - 1) env.chunk.root = rootDigest(digests);
      this.#host.write(packChunkFrame(frame, env, length));
      this.#outBytes -= length;
    }
  }

  async #waitBelowHighWater(): Promise<void> {
    const high = this.#o.highWaterBytes ?? 8 << 20;
    if (this.#host.bufferedAmount() < high) return;
    await this.#waitBelowLow();
  }

  async #waitBelowLow(): Promise<void> {
    const low = this.#o.lowWaterBytes ?? 2 << 20;
    while (this.#host.isOpen() && this.#host.bufferedAmount() > low) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          resolve();
        }, 1);
        this.#timers.add(timer);
      });
    }
  }

  #notifyDrain(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }
}
