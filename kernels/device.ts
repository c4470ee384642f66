/**
 * WebGPU device acquisition and the small helpers every kernel shares: a
 * pipeline cache, buffer creation, readback and device-loss reporting.
 *
 * @module
 */
import { type BufferLimits, checkBindingOverride } from "./limits.ts";
import { ensureRuntimeDir, envVar } from "./_env.ts";

/** Raised when no WebGPU device can be obtained or the device is lost. */
export class GpuUnavailableError extends Error {
  override name = "GpuUnavailableError";
}

/** Raised (via {@linkcode Gpu.lost}) when the device is lost mid-run. */
export class GpuDeviceLostError extends Error {
  override name = "GpuDeviceLostError";
  /** The reason WebGPU gave: "destroyed" or "unknown". */
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(`WebGPU device lost: ${reason}${message ? `: ${message}` : ""}`);
    this.reason = reason;
  }
}

/** A slice of a GPU buffer holding `length` f32 (or u32/i32) elements. */
export interface TensorRef {
  /** The buffer that holds the tensor. */
  buffer: GPUBuffer;
  /** Offset in bytes; must be a multiple of 256 when bound (WebGPU's alignment). */
  offset?: number;
  /** Number of 4-byte elements. */
  length: number;
}

/** One compute dispatch, prepared once and encoded every step. */
export interface Dispatch {
  /** A label for profiling and error messages. */
  label: string;
  /** Encodes the dispatch into an open compute pass. */
  encode(pass: GPUComputePassEncoder): void;
  /**
   * Destroys the buffers the dispatch allocated for itself (a matmul's sizes and split-K
   * scratch), where it has any; it must not be encoded after.
   */
  release?(): void;
}

/** Which family of kernel shapes suits the adapter. */
export type AdapterClass = "cpu" | "gpu";

/** Facts about the adapter in use, for logs and benchmark records. */
export interface AdapterSummary {
  description: string;
  vendor: string;
  /** "cpu" for software rasterizers (llvmpipe, lavapipe, SwiftShader, WARP). */
  class: AdapterClass;
  /** The backend requested with DENO_WEBGPU_BACKEND, or a best guess. */
  backend: string;
  isFallbackAdapter: boolean;
}

/** Options for {@linkcode acquireGpu}. */
export interface AcquireOptions {
  /** Force the kernel family instead of deciding from the adapter. */
  adapterClass?: AdapterClass;
  /** Print which adapter is used to stderr (default false). */
  log?: boolean;
  /**
   * Optional features to enable where the adapter has them (e.g.
   * `timestamp-query` for profiling); check `gpu.device.features` for which
   * were granted. Default none.
   */
  features?: GPUFeatureName[];
  /**
   * Request `shader-f16` where the adapter offers it (default true), which the
   * f16 matmul variants need; it changes nothing for f32 kernels. False gives a
   * device without it, as the GL backend's, to exercise the f32-only path.
   */
  f16?: boolean;
  /**
   * Bind at most this many bytes at once (default: the device's
   * maxStorageBufferBindingSize; at least 64 KiB). Tests set a small value to
   * exercise the chunked whole-vector kernels and the shape checks on a small model.
   */
  maxBindingBytes?: number;
}

const CPU_ADAPTER = /llvmpipe|lavapipe|swiftshader|warp|softpipe/i;

/**
 * A WebGPU device with a pipeline cache and helpers for buffers and readback.
 *
 * @example Acquire a device and read back a buffer
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * const gpu = await acquireGpu();
 * const buf = gpu.storage(new Float32Array([1, 2, 3]));
 * const out = await gpu.read(buf, 3);
 * console.log(out); // Float32Array [1, 2, 3]
 * gpu.destroy();
 * ```
 */
export class Gpu {
  /** The WebGPU device. */
  readonly device: GPUDevice;
  /** The adapter in use. */
  readonly adapter: AdapterSummary;
  /** Resolves with the loss error if the device is lost (never rejects). */
  readonly lost: Promise<GpuDeviceLostError>;
  /** The buffer limits models plan against (the binding limit may be lowered by an option). */
  readonly limits: BufferLimits;
  #pipelines = new Map<string, GPUComputePipeline>();
  #modules = new Map<string, GPUShaderModule>();
  #destroyed = false;

  constructor(
    device: GPUDevice,
    adapter: AdapterSummary,
    options: { maxBindingBytes?: number } = {},
  ) {
    this.device = device;
    this.adapter = adapter;
    const deviceMax = device.limits.maxStorageBufferBindingSize;
    this.limits = {
      maxBindingBytes: options.maxBindingBytes === undefined
        ? deviceMax
        : checkBindingOverride(options.maxBindingBytes, deviceMax),
      maxBufferBytes: device.limits.maxBufferSize,
    };
    this.lost = device.lost.then((info) => new GpuDeviceLostError(info.reason, info.message));
    // A WGSL or validation error otherwise only voids the submit, silently: say so.
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      this.errors.push(error.message);
      console.error(`WebGPU error: ${error.message}`);
    });
  }

  /** Uncaptured WebGPU errors seen so far (also printed to stderr as they happen). */
  readonly errors: string[] = [];

  /** True when the device has `shader-f16`, which f16 storage and arithmetic in WGSL need. */
  get hasF16(): boolean {
    return this.device.features.has("shader-f16");
  }

  /** True when kernels should use the CPU-friendly (register-blocked) shapes. */
  get isCpu(): boolean {
    return this.adapter.class === "cpu";
  }

  /**
   * A compute pipeline for `code`'s `entry`, compiled once and cached.
   * Compilation errors are thrown with the shader's messages.
   */
  pipeline(code: string, entry = "main", label = entry): GPUComputePipeline {
    const key = `${entry}\u0000${code}`;
    let p = this.#pipelines.get(key);
    if (p) return p;
    let module = this.#modules.get(code);
    if (!module) {
      module = this.device.createShaderModule({ code, label });
      this.#modules.set(code, module);
    }
    p = this.device.createComputePipeline({
      label,
      layout: "auto",
      compute: { module, entryPoint: entry },
    });
    this.#pipelines.set(key, p);
    return p;
  }

  /**
   * Compiles `code` and throws a readable error if WGSL compilation fails.
   * Use in tests and on first use of generated shaders.
   */
  async checkShader(code: string, label = "shader"): Promise<void> {
    const module = this.device.createShaderModule({ code, label });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length > 0) {
      const detail = errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; ");
      throw new Error(`WGSL compilation failed for ${label}: ${detail}`);
    }
  }

  /** Binds buffers to binding indices 0..n-1 of group 0 of `pipeline`. */
  bind(pipeline: GPUComputePipeline, refs: TensorRef[], label?: string): GPUBindGroup {
    return this.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: refs.map((r, i) => ({
        binding: i,
        resource: { buffer: r.buffer, offset: r.offset ?? 0, size: r.length * 4 },
      })),
    });
  }

  /** A prepared dispatch of `pipeline` over `workgroups` with buffers `refs`. */
  dispatch(
    label: string,
    pipeline: GPUComputePipeline,
    refs: TensorRef[],
    workgroups: [number, number?, number?],
  ): Dispatch {
    const group = this.bind(pipeline, refs, label);
    const [x, y = 1, z = 1] = workgroups;
    const limit = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (x > limit || y > limit || z > limit) {
      throw new RangeError(`Cannot dispatch ${label}: workgroups ${x}x${y}x${z} exceed ${limit}`);
    }
    return {
      label,
      encode(pass) {
        if (x === 0 || y === 0 || z === 0) return;
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(x, y, z);
      },
    };
  }

  /** A storage buffer of `length` 4-byte elements, zeroed, or filled from `data`. */
  storage(data: Float32Array | Uint32Array | Int32Array | number, label?: string): GPUBuffer {
    const length = typeof data === "number" ? data : data.length;
    const size = Math.max(16, Math.ceil((length * 4) / 16) * 16);
    const buffer = this.device.createBuffer({
      label,
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    if (typeof data !== "number") this.write(buffer, data);
    return buffer;
  }

  /** A uniform buffer holding `data` (u32 or f32 words). */
  uniform(data: Uint32Array | Float32Array, label?: string): GPUBuffer {
    const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
    const buffer = this.device.createBuffer({
      label,
      size,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.write(buffer, data);
    return buffer;
  }

  /** Encodes `dispatches` into one compute pass and submits them. */
  run(dispatches: Dispatch[]): void {
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (const d of dispatches) d.encode(pass);
    pass.end();
    this.device.queue.submit([enc.finish()]);
  }

  /**
   * Milliseconds from submitting one compute pass of what `encode` records
   * until the queue reports the work done: wall time, the submit's own cost
   * included (time an empty pass to take it off). For timing kernels.
   */
  async timedPass(encode: (pass: GPUComputePassEncoder) => void): Promise<number> {
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encode(pass);
    pass.end();
    const t0 = performance.now();
    this.device.queue.submit([enc.finish()]);
    await this.device.queue.onSubmittedWorkDone();
    return performance.now() - t0;
  }

  /** Copies `length` floats from `buffer` (at byte `offset`) back to the CPU. */
  async read(buffer: GPUBuffer, length: number, offset = 0): Promise<Float32Array> {
    const bytes = await this.readBytes(buffer, length * 4, offset);
    return new Float32Array(bytes.buffer, bytes.byteOffset, length);
  }

  /** Copies `size` bytes from `buffer` (at byte `offset`) back to the CPU. */
  async readBytes(buffer: GPUBuffer, size: number, offset = 0): Promise<Uint8Array> {
    const padded = Math.ceil(size / 4) * 4;
    const staging = this.device.createBuffer({
      size: padded,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, offset, staging, 0, padded);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = new Uint8Array(staging.getMappedRange().slice(0, size));
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Writes `data` into `buffer` at byte `offset`. */
  write(buffer: GPUBuffer, data: ArrayBufferView | ArrayBuffer, offset = 0): void {
    this.device.queue.writeBuffer(buffer, offset, data as ArrayBufferView<ArrayBuffer>);
  }

  /** Destroys the device; idempotent. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#pipelines.clear();
    this.#modules.clear();
    this.device.destroy();
  }
}

/**
 * Acquires a WebGPU adapter and device, with errors that say what to install.
 *
 * @example
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * const gpu = await acquireGpu();
 * console.log(gpu.adapter.description);
 * gpu.destroy();
 * ```
 */
export async function acquireGpu(options: AcquireOptions = {}): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new GpuUnavailableError(
      "Cannot start WebGPU: navigator.gpu is missing (use Deno 2.x, which ships WebGPU)",
    );
  }
  ensureRuntimeDir();
  // A backend named in the environment (even an empty one) limits wgpu to it.
  const envBackend = envVar("DENO_WEBGPU_BACKEND");
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    const forced = envBackend === undefined
      ? ""
      : ` with DENO_WEBGPU_BACKEND=${JSON.stringify(envBackend)} (unset it to try every backend)`;
    throw new GpuUnavailableError(
      `Cannot start WebGPU: no adapter found${forced}. On a machine without a GPU install ` +
        "Mesa's software drivers: apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri " +
        "mesa-vulkan-drivers",
    );
  }
  const limits = adapter.limits;
  const wanted = new Set<GPUFeatureName>(options.features ?? []);
  if (options.f16 ?? true) wanted.add("shader-f16");
  else wanted.delete("shader-f16");
  const device = await adapter.requestDevice({
    requiredFeatures: [...wanted].filter((f) => adapter.features.has(f)),
    requiredLimits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: limits.maxComputeWorkgroupSizeY,
    },
  });
  const info = adapter.info;
  // Chromium leaves description and device empty and names vendor and architecture
  // ("google swiftshader"), which is what tells its CPU adapter apart.
  const description = info.description || info.device ||
    [info.vendor, info.architecture].filter(Boolean).join(" ") || "unknown adapter";
  // Deno reports the fallback flag on the adapter info (older versions on the adapter).
  const isFallback = Boolean((info as { isFallbackAdapter?: boolean }).isFallbackAdapter);
  const isCpuAdapter = isFallback || CPU_ADAPTER.test(description);
  const summary: AdapterSummary = {
    description,
    vendor: info.vendor,
    class: options.adapterClass ?? (isCpuAdapter ? "cpu" : "gpu"),
    // Deno exposes no backend name; Mesa's Vulkan driver offers shader-f16, its GL path does not.
    backend: envBackend ?? (adapter.features.has("shader-f16") ? "vulkan?" : "gl?"),
    isFallbackAdapter: isFallback,
  };
  if (options.log) {
    console.error(
      `WebGPU: ${summary.description} (backend ${summary.backend}, kernels for ${summary.class})`,
    );
  }
  try {
    return new Gpu(device, summary, { maxBindingBytes: options.maxBindingBytes });
  } catch (err) {
    device.destroy();
    throw err;
  }
}
