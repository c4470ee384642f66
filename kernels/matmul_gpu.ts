/**
 * Matmul variants shaped for real GPUs: workgroup tiles staged through
 * workgroup memory, and split-K for outputs too small to fill the GPU.
 *
 * - `tiled`: the first GPU kernel, kept for comparison: a 64×64 tile per
 *   16×16 workgroup, 4×4 outputs per invocation, scalar loads, one buffer.
 * - `tile{BM}[x{BN}]` (`tile128`, `tile128x64`, `tile64`, also `tile64x128`):
 *   a BM×BN tile of C per 16×16 workgroup, (BM/16)×(BN/16) outputs per
 *   invocation in registers; vec4 global loads wherever the operand's
 *   contiguous dimension is a multiple of 4; two workgroup-memory buffers,
 *   so the global loads of k-tile t+1 are in flight while tile t is
 *   multiplied, with one barrier per k-tile; tile rows padded by one vec4 so
 *   that the transposing stores of a k-contiguous operand spread over the
 *   banks. BK (the k-tile) is 8 for 128×128 and 16 otherwise, which keeps
 *   every variant's workgroup memory (two buffers of A's and B's tiles) at
 *   17-26 KiB, under llvmpipe's 32 KiB.
 * - suffix `s{S}` (e.g. `tile64s8`): split-K. Workgroup z of S takes a
 *   BK-aligned S-th of k and writes its partial tile to a scratch buffer
 *   [S, m, n] (allocated once, with the Dispatch); a second pass sums the
 *   partials in split order (deterministic, no atomics) and applies bias,
 *   residual, epilogue and accumulate. The column sums (bias gradient) are
 *   taken from B's loads as in the unsplit kernel: each split's first row of
 *   workgroups writes its partial sums after the partial tiles ([S, n]) and
 *   the reduce pass adds them in split order. That reuses loads the kernel
 *   already makes instead of reading B again in the reduce pass, where one
 *   invocation per column would walk all of k serially.
 * - f16 storage (`aType`, `bType`, `cType` of `matmul`): every `tile`
 *   variant also reads A or B (or both) as f16 and stages them in workgroup
 *   memory as f16; with both in f16 the same memory holds a k-tile twice as
 *   deep (BK 16 at 128×128, else 32). Each value is widened to f32 as it is
 *   read from the tile, and the sums (and split-K's partials) stay f32. A
 *   product of two f16 is exact in f32 (11 + 11 significand bits), so each
 *   output is the f32 sum of exact products, in k order as in the f32
 *   kernels. C may be stored as f16, rounded once at the store.
 *
 * {@linkcode gpuDefaultVariant} picks among them per shape.
 *
 * @module
 */
import {
  DIMS,
  dimsBinding,
  enableF16,
  extraBindings,
  header,
  type Layout,
  type Plan,
  store,
  t,
  u,
} from "./_matmul_wgsl.ts";

/** What a pass of a matmul binds: see {@linkcode MatmulPlan}. */
export type PassRole = "matmul" | "partial" | "reduce";

/** One compute pass of a matmul and what it binds. */
export interface Pass extends Plan {
  /**
   * `matmul`: A, B, C, sizes, extras. `partial`: A, B, scratch, sizes.
   * `reduce`: scratch, C, sizes, extras.
   */
  role: PassRole;
}

/** The passes of one matmul, encoded in order into one compute pass. */
export interface MatmulPlan {
  /** The passes, in order. */
  passes: Pass[];
  /** f32 elements of scratch the passes share (0: none). */
  scratch: number;
  /** Bytes of workgroup memory the largest pass declares. */
  workgroupBytes: number;
}

/** Workgroup-tiled kernel for real GPUs: 64×64 tile, 16×16 invocations, 4×4 each. */
export function tiledPlan(l: Layout): Plan {
  const BM = 64, BN = 64, BK = 16;
  const aLoad = l.transA ? `A[gk * M + gi]` : `A[gi * K + gk]`;
  const bLoad = l.transB ? `B[gj * K + gk]` : `B[gk * N + gj]`;
  // Tiles are stored as vec4s: 4 consecutive rows (columns) that one invocation reads at
  // once. Small vec4 arrays also keep the GL backend's compile time down: its zero
  // initialization of workgroup memory is unrolled per array element.
  const code = `${header(l)}
var<workgroup> As: array<vec4<f32>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(BK * BN) / 4}>;
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${DIMS}
  let tid = lid.y * 16u + lid.x;
  let rowBase = wg.y * ${u(BM)};
  let colBase = wg.x * ${u(BN)};
  var acc: array<vec4<f32>, 4>;
  var bsum = 0.0;
  for (var t = 0u; t < (K + ${u(BK - 1)}) / ${u(BK)}; t++) {
    let k0 = t * ${u(BK)};
    // 1024 elements per tile, 256 invocations: 4 loads each, zero outside the matrix.
    for (var e = 0u; e < 4u; e++) {
      let idx = tid + e * 256u;
      let kk = idx / ${u(BM)};
      let mm = idx % ${u(BM)};
      let gi = rowBase + mm;
      let gk = k0 + kk;
      var av = 0.0;
      if (gi < M && gk < K) { av = ${aLoad}; }
      As[kk * ${u(BM / 4)} + mm / 4u][mm % 4u] = av;
      let gj = colBase + mm;
      var bv = 0.0;
      if (gj < N && gk < K) { bv = ${bLoad}; }
      Bs[kk * ${u(BN / 4)} + mm / 4u][mm % 4u] = bv;
    }
    workgroupBarrier();
    ${
    l.colSum
      ? `if (wg.y == 0u && tid < ${u(BN)}) {
      for (var kk = 0u; kk < ${u(BK)}; kk++) {
        bsum += Bs[kk * ${u(BN / 4)} + tid / 4u][tid % 4u];
      }
    }`
      : ""
  }
    for (var kk = 0u; kk < ${u(BK)}; kk++) {
      let a = As[kk * ${u(BM / 4)} + lid.y];
      let b = Bs[kk * ${u(BN / 4)} + lid.x];
      acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
      acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
      acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
      acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
    }
    workgroupBarrier();
  }
  for (var y = 0u; y < 4u; y++) {
    let row = rowBase + lid.y * 4u + y;
    for (var x = 0u; x < 4u; x++) {
      let col = colBase + lid.x * 4u + x;
      if (row < M && col < N) {
        ${store(l, "row", "col", "acc[y][x]")}
      }
    }
  }
  ${
    l.colSum
      ? `if (wg.y == 0u && tid < ${u(BN)} && colBase + tid < N) {
    colSum[colBase + tid] = colSum[colBase + tid] + bsum;
  }`
      : ""
  }
}
`;
  return { code, workgroups: [Math.ceil(l.n / BN), Math.ceil(l.m / BM), 1] };
}

/** The shape of a `tile` variant. */
export interface TileParams {
  /** Rows of C per workgroup: 64 or 128. */
  bm: number;
  /** Columns of C per workgroup: 64 or 128. */
  bn: number;
  /** Splits of k (1: no split-K). */
  splits: number;
}

/** One operand's tile loader: global loads into registers, registers into workgroup memory. */
interface Loader {
  /** Declarations of the staging registers. */
  decl: string;
  /** Loads the k-tile starting at `k0` into the registers (zero outside the matrix). */
  load: (k0: string) => string;
  /** Stores the registers into workgroup buffer `buf` (0 or 1). */
  put: (buf: string) => string;
}

/**
 * The loader of operand `X` (A or B) for a tile of `outer` rows of op(A) (or
 * columns of op(B)) by `bk` steps of k, staged in `Xs`: [2 buffers][bk][outer/4 + 1]
 * vec4s (k-major, so that an invocation reads 4 consecutive rows or columns at once).
 * `kContig`: the operand's k is its contiguous dimension in memory. `vec`: it is bound
 * as vec4s (its contiguous dimension is a multiple of 4).
 */
function loader(
  x: "A" | "B",
  o: {
    base: string;
    size: string;
    outer: number;
    bk: number;
    kContig: boolean;
    vec: boolean;
    half: boolean;
  },
): Loader {
  const { outer, bk, kContig, vec, half } = o;
  const stride = outer / 4 + 1;
  const inner = kContig ? bk : outer;
  const per = (outer * bk) / 256;
  const lines = (f: (e: number) => string, count: number) =>
    Array.from({ length: count }, (_, e) => f(e)).join("\n    ");
  const at = (buf: string, kk: string, oo: string) =>
    `${x}s[(${buf}) * ${u(bk * stride)} + (${kk}) * ${u(stride)} + (${oo})]`;
  if (vec) {
    const count = per / 4;
    // Within each vec4: `iq` counts vec4s along the contiguous dimension, `ot` the other.
    const coords = (e: number) =>
      `let v${x}${e} = tid + ${u(e * 256)}; let iq${x}${e} = v${x}${e} % ${
        u(inner / 4)
      }; let ot${x}${e} = v${x}${e} / ${u(inner / 4)};`;
    const load = (k0: string) =>
      lines((e) => {
        const [kk, oo] = kContig
          ? [`${k0} + iq${x}${e} * 4u`, `${o.base} + ot${x}${e}`]
          : [`${k0} + ot${x}${e}`, `${o.base} + iq${x}${e} * 4u`];
        const idx = kContig
          ? `(${oo}) * (K / 4u) + (${kk}) / 4u`
          : `(${kk}) * (${o.size} / 4u) + (${oo}) / 4u`;
        return `{ ${coords(e)} let kk = ${kk}; let oo = ${oo}; r${x}${e} = ${
          t(true, half)
        }(0.0); if (kk < kEnd && oo < ${o.size}) { r${x}${e} = ${x}[${idx}]; } }`;
      }, count);
    const put = (buf: string) =>
      lines((e) => {
        if (!kContig) return `{ ${coords(e)} ${at(buf, `ot${x}${e}`, `iq${x}${e}`)} = r${x}${e}; }`;
        // Transposing store: the 4 k-steps of the vec4 go to 4 rows of the tile.
        const parts = [0, 1, 2, 3].map((s) =>
          `${
            at(buf, `iq${x}${e} * 4u + ${u(s)}`, `ot${x}${e} / 4u`)
          }[ot${x}${e} % 4u] = r${x}${e}.${"xyzw"[s]};`
        );
        return `{ ${coords(e)} ${parts.join(" ")} }`;
      }, count);
    return { decl: lines((e) => `var r${x}${e}: ${t(true, half)};`, count), load, put };
  }
  const coords = (e: number) =>
    `let v${x}${e} = tid + ${u(e * 256)}; let ii${x}${e} = v${x}${e} % ${
      u(inner)
    }; let ot${x}${e} = v${x}${e} / ${u(inner)};`;
  const kkOf = (e: number) => (kContig ? `ii${x}${e}` : `ot${x}${e}`);
  const ooOf = (e: number) => (kContig ? `ot${x}${e}` : `ii${x}${e}`);
  const load = (k0: string) =>
    lines((e) => {
      const idx = kContig ? `oo * K + kk` : `kk * ${o.size} + oo`;
      return `{ ${coords(e)} let kk = ${k0} + ${kkOf(e)}; let oo = ${o.base} + ${
        ooOf(e)
      }; r${x}${e} = 0.0; if (kk < kEnd && oo < ${o.size}) { r${x}${e} = ${x}[${idx}]; } }`;
    }, per);
  const put = (buf: string) =>
    lines(
      (e) =>
        `{ ${coords(e)} ${at(buf, kkOf(e), `${ooOf(e)} / 4u`)}[${ooOf(e)} % 4u] = r${x}${e}; }`,
      per,
    );
  return { decl: lines((e) => `var r${x}${e}: ${t(false, half)};`, per), load, put };
}

/** Which operands of a `tile` variant are stored (and staged) as f16. */
export interface TileStorage {
  /** A is f16. */
  f16A: boolean;
  /** B is f16. */
  f16B: boolean;
}

/**
 * The k-tile of a `tile` variant: 8 at 128×128 (its 8×8 blocks reuse each load 8 times), else
 * 16; twice that when A and B are both f16, whose tiles take half the bytes.
 */
function kTile(p: TileParams, s: TileStorage): number {
  return (p.bm === 128 && p.bn === 128 ? 8 : 16) * (s.f16A && s.f16B ? 2 : 1);
}

/**
 * Bytes of workgroup memory a `tile` variant declares: two buffers of A's and B's tiles, each
 * of vec4<f32> or, for an f16 operand, vec4<f16>.
 */
export function tileWorkgroupBytes(
  p: TileParams,
  s: TileStorage = { f16A: false, f16B: false },
): number {
  const bk = kTile(p, s);
  return 2 * bk * ((p.bm / 4 + 1) * (s.f16A ? 8 : 16) + (p.bn / 4 + 1) * (s.f16B ? 8 : 16));
}

/**
 * The main pass of a `tile` variant: with `splits` > 1 the partial pass,
 * which writes its tile (and column sums) to the scratch buffer bound as Cm.
 */
function tilePass(l: Layout, p: TileParams): Plan {
  const { bm: BM, bn: BN, splits: S } = p;
  const BK = kTile(p, l);
  const TM = BM / 16, TN = BN / 16;
  // Tiles of f16 are widened as they are read, so the arithmetic is the f32 kernel's.
  const widen = (half: boolean, e: string) => (half ? `vec4<f32>(${e})` : e);
  const split = S > 1;
  const vecA = l.transA ? l.m % 4 === 0 : l.k % 4 === 0;
  const vecB = l.transB ? l.k % 4 === 0 : l.n % 4 === 0;
  const vecC = l.n % 4 === 0;
  const la = loader("A", {
    base: "rowBase",
    size: "M",
    outer: BM,
    bk: BK,
    kContig: !l.transA,
    vec: vecA,
    half: l.f16A,
  });
  const lb = loader("B", {
    base: "colBase",
    size: "N",
    outer: BN,
    bk: BK,
    kContig: l.transB,
    vec: vecB,
    half: l.f16B,
  });
  const sa = BM / 4 + 1, sb = BN / 4 + 1;
  const acc: string[] = [];
  for (let r = 0; r < TM; r++) for (let q = 0; q < TN / 4; q++) acc.push(`c${r}_${q}`);
  const fmas: string[] = [];
  for (let ii = 0; ii < TM / 4; ii++) {
    fmas.push(
      `let a${ii} = ${widen(l.f16A, `As[aBase + kk * ${u(sa)} + lid.y + ${u(16 * ii)}]`)};`,
    );
  }
  for (let q = 0; q < TN / 4; q++) {
    fmas.push(`let b${q} = ${widen(l.f16B, `Bs[bBase + kk * ${u(sb)} + lid.x + ${u(16 * q)}]`)};`);
  }
  for (let r = 0; r < TM; r++) {
    for (let q = 0; q < TN / 4; q++) {
      const a = `a${Math.floor(r / 4)}.${"xyzw"[r % 4]}`;
      fmas.push(`c${r}_${q} = fma(vec4<f32>(${a}), b${q}, c${r}_${q});`);
    }
  }
  // An invocation's rows: 4 consecutive at lid.y * 4, then again 64 further on; its columns
  // likewise. Neighbouring lanes then read neighbouring vec4s of B's tile (no bank conflicts)
  // and share A's (a broadcast).
  const outs: string[] = [];
  for (let r = 0; r < TM; r++) {
    const row = `rowBase + lid.y * 4u + ${u(64 * Math.floor(r / 4) + (r % 4))}`;
    for (let q = 0; q < TN / 4; q++) {
      const col = `colBase + lid.x * 4u + ${u(64 * q)}`;
      const v = `c${r}_${q}`;
      let body: string;
      if (split) {
        const at = `wg.z * M * N + row * N + col`;
        body = vecC
          ? `Cm[(${at}) / 4u] = ${v};`
          : [0, 1, 2, 3].map((x) =>
            `if (col + ${u(x)} < N) { Cm[${at} + ${u(x)}] = ${v}.${"xyzw"[x]}; }`
          )
            .join(" ");
      } else {
        body = vecC
          ? store(l, "row", "col", v, true)
          : [0, 1, 2, 3].map((x) =>
            `if (col + ${u(x)} < N) { ${store(l, "row", `(col + ${u(x)})`, `${v}.${"xyzw"[x]}`)} }`
          ).join(" ");
      }
      outs.push(`{ let row = ${row}; let col = ${col}; if (row < M && col < N) { ${body} } }`);
    }
  }
  // Column sums of op(B), 4 columns per invocation, in k order from the tiles in workgroup
  // memory (zero outside the matrix); only the first row of workgroups keeps them.
  const colSum = l.colSum;
  const sumBody = colSum
    ? `if (wg.y == 0u && tid < ${u(BN / 4)}) {
      for (var kk = 0u; kk < ${u(BK)}; kk++) { bsum = bsum + ${
      widen(l.f16B, `Bs[bBase + kk * ${u(sb)} + tid]`)
    }; }
    }`
    : "";
  let sumOut = "";
  if (colSum) {
    const comps = [0, 1, 2, 3].map((x) => {
      const col = `colBase + tid * 4u + ${u(x)}`;
      const dst = split ? `Cm[${u(S)} * M * N + wg.z * N + ${col}]` : `colSum[${col}]`;
      const v = split ? `bsum.${"xyzw"[x]}` : `${dst} + bsum.${"xyzw"[x]}`;
      return `if (${col} < N) { ${dst} = ${v}; }`;
    });
    const vecOut = split && vecC
      ? `if (colBase + tid * 4u < N) { Cm[(${
        u(S)
      } * M * N + wg.z * N + colBase + tid * 4u) / 4u] = bsum; }`
      : comps.join("\n    ");
    sumOut = `if (wg.y == 0u && tid < ${u(BN / 4)}) {\n    ${vecOut}\n  }`;
  }
  const plain: Layout = {
    ...l,
    accumulate: false,
    bias: false,
    residual: false,
    epilogue: "none",
    colSum: false,
    f16C: false,
  };
  const kRange = split
    ? `let per = (kTiles + ${u(S - 1)}) / ${u(S)} * ${u(BK)};
  let kBegin = min(K, wg.z * per);
  let kEnd = min(K, kBegin + per);`
    : `let kBegin = 0u;
  let kEnd = K;`;
  const code = `${header(split ? plain : l, vecA, vecB, vecC)}
var<workgroup> As: array<${t(true, l.f16A)}, ${2 * BK * sa}>;
var<workgroup> Bs: array<${t(true, l.f16B)}, ${2 * BK * sb}>;
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${DIMS}
  let tid = lid.y * 16u + lid.x;
  let rowBase = wg.y * ${u(BM)};
  let colBase = wg.x * ${u(BN)};
  let kTiles = (K + ${u(BK - 1)}) / ${u(BK)};
  ${kRange}
  let tiles = (kEnd - kBegin + ${u(BK - 1)}) / ${u(BK)};
  ${acc.map((c) => `var ${c} = vec4<f32>(0.0);`).join("\n  ")}
  ${colSum ? "var bsum = vec4<f32>(0.0);" : ""}
  ${la.decl}
  ${lb.decl}
  if (tiles > 0u) {
    ${la.load("kBegin")}
    ${lb.load("kBegin")}
    ${la.put("0u")}
    ${lb.put("0u")}
  }
  workgroupBarrier();
  // One barrier per k-tile: tile t is read from buffer t % 2 while tile t + 1 is loaded
  // into registers and then stored into the other buffer, which nobody reads until after
  // the barrier; the barrier also keeps tile t + 2's stores behind every read of tile t.
  for (var t = 0u; t < tiles; t++) {
    let cur = t % 2u;
    let next = t + 1u < tiles;
    if (next) {
      let k1 = kBegin + (t + 1u) * ${u(BK)};
      ${la.load("k1")}
      ${lb.load("k1")}
    }
    let aBase = cur * ${u(BK * sa)};
    let bBase = cur * ${u(BK * sb)};
    for (var kk = 0u; kk < ${u(BK)}; kk++) {
      ${fmas.join("\n      ")}
    }
    ${sumBody}
    if (next) {
      ${la.put("1u - cur")}
      ${lb.put("1u - cur")}
    }
    workgroupBarrier();
  }
  ${outs.join("\n  ")}
  ${sumOut}
}
`;
  return { code, workgroups: [Math.ceil(l.n / BN), Math.ceil(l.m / BM), S] };
}

/**
 * The reduce pass of split-K: one invocation per output (four with n a
 * multiple of 4) sums the S partials in split order, then finishes the output
 * like the unsplit kernel; row 0 also adds the column-sum partials.
 */
function reducePass(l: Layout, splits: number): Plan {
  const vec = l.n % 4 === 0;
  const w = vec ? 4 : 1;
  const ty = t(vec);
  const colSum = l.colSum
    ? `if (row == 0u) {
    var cs = ${ty}(0.0);
    for (var s = 0u; s < ${u(splits)}; s++) { cs = cs + P[${u(splits)} * M * NQ + s * NQ + q]; }
    ${
      vec
        ? [0, 1, 2, 3].map((x) =>
          `colSum[col + ${u(x)}] = colSum[col + ${u(x)}] + cs.${"xyzw"[x]};`
        )
          .join("\n    ")
        : "colSum[col] = colSum[col] + cs;"
    }
  }`
    : "";
  const code = `${enableF16(l)}@group(0) @binding(0) var<storage, read> P: array<${ty}>;
@group(0) @binding(1) var<storage, read_write> Cm: array<${t(vec, l.f16C)}>;
${dimsBinding(2).join("\n")}
${extraBindings(l, vec, 3).join("\n")}
@compute @workgroup_size(64, 4, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${DIMS}
  let NQ = N / ${u(w)};
  let row = gid.y;
  let q = gid.x;
  if (row >= M || q >= NQ) { return; }
  let col = q * ${u(w)};
  var acc = ${ty}(0.0);
  for (var s = 0u; s < ${u(splits)}; s++) { acc = acc + P[s * M * NQ + row * NQ + q]; }
  ${store(l, "row", "col", "acc", vec)}
  ${colSum}
}
`;
  return { code, workgroups: [Math.ceil(l.n / w / 64), Math.ceil(l.m / 4), 1] };
}

/** The passes of a `tile` variant at layout `l`. */
export function tilePlan(l: Layout, p: TileParams): MatmulPlan {
  const workgroupBytes = tileWorkgroupBytes(p, l);
  if (p.splits === 1) {
    return { passes: [{ ...tilePass(l, p), role: "matmul" }], scratch: 0, workgroupBytes };
  }
  return {
    passes: [
      { ...tilePass(l, p), role: "partial" },
      { ...reducePass(l, p.splits), role: "reduce" },
    ],
    scratch: p.splits * l.m * l.n + (l.colSum ? p.splits * l.n : 0),
    workgroupBytes,
  };
}

const TILE_NAME = /^tile(64|128)(?:x(64|128))?(?:s(\d+))?$/;

/**
 * True when `variant` has an f16 form (any of A, B, C stored as f16): the `tile`
 * variants, split-K included.
 *
 * @example
 * ```ts
 * import { hasF16Form } from "./matmul_gpu.ts";
 * console.log(hasF16Form("tile64s4"), hasF16Form("reg32x16v")); // true false
 * ```
 */
export function hasF16Form(variant: string): boolean {
  return TILE_NAME.test(variant);
}

/** The most splits a `s{S}` suffix may ask for. */
export const MAX_SPLITS = 64;

/**
 * The plan of a GPU-shaped variant (`tiled`, `tile...`), or null if the name
 * is not one of them.
 */
export function gpuPlan(variant: string, l: Layout): MatmulPlan | null {
  if (variant === "tiled") {
    return { passes: [{ ...tiledPlan(l), role: "matmul" }], scratch: 0, workgroupBytes: 8192 };
  }
  const m = TILE_NAME.exec(variant);
  if (!m) return null;
  const bm = Number(m[1]);
  const bn = m[2] ? Number(m[2]) : bm;
  const splits = m[3] ? Number(m[3]) : 1;
  if (splits < 1 || splits > MAX_SPLITS) {
    throw new RangeError(`Invalid matmul variant: ${variant} (need 1 <= splits <= ${MAX_SPLITS})`);
  }
  return tilePlan(l, { bm, bn, splits });
}

/** The GPU variants {@linkcode matmulVariants} lists, the per-shape choices first. */
export const GPU_VARIANTS = ["tile128", "tile128x64", "tile64", "tile64s4", "tiled"];

/**
 * Workgroups a GPU should be given to be busy: 4 per SM of a 132-SM H200
 * (WebGPU does not say how many SMs an adapter has; a smaller GPU just runs
 * more waves of the same tiles).
 */
export const GPU_BUSY_WORKGROUPS = 4 * 132;

/**
 * The GPU variant for a shape, by how many workgroups each tile size gives:
 *
 * - Per k-step of one BK slice, a BM×BN tile loads (BM + BN)·BK floats for
 *   2·BM·BN·BK FLOPs: 32 FLOP per byte of global traffic at 128×128, 16 at
 *   64×64. From workgroup memory, an invocation's TM×TN block reads
 *   (TM + TN)·4 bytes per TM·TN FMAs: 1 byte per FMA at 8×8, 2 at 4×4; an SM
 *   moves about 128 bytes and does 128 FMAs per clock, so only the 8×8 block
 *   can keep its FMA units busy. Hence `tile128` when its 128×128 tiles give
 *   at least a wave of 2 per SM (264: 64 accumulators per invocation allow
 *   about 2 such workgroups per SM), then `tile128x64`.
 * - Smaller outputs get `tile64`. When even that leaves fewer than
 *   {@linkcode GPU_BUSY_WORKGROUPS} workgroups and k is long, split k so that
 *   tiles × splits reaches it, keeping at least 256 of k per split (so each
 *   split's 64×64 tile still does 2 MFLOP against 32 KiB of partials written
 *   and read back) and at most 16 splits. Example: a weight gradient with
 *   m·n = 256·1024 over k = 4096 tokens has 64 tiles of 64×64; 9 splits
 *   give 576 workgroups, each over 464 of k, and the partials, 9 MiB, cost
 *   a few microseconds against the ~100 µs of arithmetic.
 *
 * @example
 * ```ts
 * import { gpuDefaultVariant } from "./matmul_gpu.ts";
 * console.log(gpuDefaultVariant({ m: 4096, n: 4096, k: 4096 })); // "tile128"
 * console.log(gpuDefaultVariant({ m: 256, n: 1024, k: 4096 })); // "tile64s9"
 * ```
 */
export function gpuDefaultVariant(shape: { m: number; n: number; k: number }): string {
  const tiles = (bm: number, bn: number) => Math.ceil(shape.m / bm) * Math.ceil(shape.n / bn);
  const wave = GPU_BUSY_WORKGROUPS / 2;
  if (tiles(128, 128) >= wave) return "tile128";
  if (tiles(128, 64) >= wave) return "tile128x64";
  const t64 = tiles(64, 64);
  if (t64 >= GPU_BUSY_WORKGROUPS) return "tile64";
  const splits = Math.min(16, Math.floor(shape.k / 256), Math.ceil(GPU_BUSY_WORKGROUPS / t64));
  return splits >= 2 ? `tile64s${splits}` : "tile64";
}
