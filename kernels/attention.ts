/**
 * Causal multi-head self-attention over qkv [B,T,3C] (q, k, v blocks in that
 * order; head h uses columns h*hs..(h+1)*hs of each block, hs = C/NH), scores
 * scaled by 1/sqrt(hs). The forward saves the softmax probabilities att
 * [B,NH,T,T] (zero above the diagonal).
 *
 * The kernels are register-blocked for software adapters (llvmpipe), where
 * storage-buffer loads, not arithmetic, bound the speed: each invocation owns
 * a block of `block` consecutive rows (query rows, or key rows in the key
 * pass) of one (batch, head) pair and keeps them in registers, so each K, V, Q
 * or dout row it loads serves the whole block. The 8 invocations of a
 * workgroup (llvmpipe's SIMD width) take 8 different (batch, head) pairs with
 * the same row block, so their loop bounds agree and no lane idles. Rows are
 * loaded as vec4 when hs and C allow it, att and datt as vec4 runs of 4 keys
 * when T allows it; otherwise scalar code of the same shape is generated.
 *
 * Forward, per query block: a first pass over the keys writes the raw scores
 * into att and keeps each row's maximum and softmax denominator (online,
 * rescaling once per 4 keys); a second reads the scores back, overwrites them
 * with the probabilities and sums P·V. No dynamically indexed private arrays
 * are used (llvmpipe spills them to memory).
 *
 * The backward avoids scatter-adds: one dispatch per query block computes the
 * score gradients (kept in the `datt` scratch, [B,NH,T,T]; its first pass
 * parks dP = dout·V there) and dq; a second, per key block, sums over the
 * later query rows into dk and dv.
 *
 * `datt` in attentionBackward holds the gradient of the pre-softmax scores
 * (written, not accumulated, on and below the diagonal; entries above it may
 * be read but are masked out, never used). It is optional: when absent the
 * factory allocates it.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { checkRef, checkShape, f32Lit, scratch, slice } from "./_wgsl.ts";

/** Invocations per workgroup: one (batch, head) pair each, llvmpipe's 8 f32 lanes. */
const LANES = 8;

/**
 * Rows per invocation unless the shape names `block`. On llvmpipe at b=16,
 * t=64, c=64, nh=4, 8 and 16 rows measured within noise of each other (4 was
 * ~40% slower); 16 compiles ~3x slower (seconds per kernel), so 8.
 */
const DEFAULT_BLOCK = 8;

/** Shape of the attention kernels; `block` optionally sets the rows per invocation. */
export interface AttentionShape {
  /** Batch size. */
  b: number;
  /** Sequence length. */
  t: number;
  /** Channels (q, k and v each have c columns). */
  c: number;
  /** Number of heads; must divide c. */
  nh: number;
  /** Rows of a (batch, head) pair per invocation (default 8). */
  block?: number;
}

interface Sizes {
  b: number;
  t: number;
  c: number;
  nh: number;
  hs: number;
  /** Rows per invocation. */
  r: number;
  /** qkv, out, dout and dqkv are read as vec4 (hs and c multiples of 4). */
  vq: boolean;
  /** att and datt are read as vec4 runs of 4 keys (t and block multiples of 4). */
  va: boolean;
}

function sizes(kernel: string, shape: AttentionShape): Sizes {
  checkShape(kernel, shape, ["b", "t", "c", "nh"]);
  const { b, t, c, nh } = shape;
  if (c % nh !== 0) {
    throw new RangeError(`Cannot build ${kernel}: c (${c}) must be a multiple of nh (${nh})`);
  }
  const r = shape.block ?? Math.min(DEFAULT_BLOCK, Math.ceil(t / 4) * 4);
  if (!Number.isInteger(r) || r < 1 || r > 64) {
    throw new RangeError(`Cannot build ${kernel}: block must be an integer in 1..64, got ${r}`);
  }
  const hs = c / nh;
  return { b, t, c, nh, hs, r, vq: hs % 4 === 0, va: t % 4 === 0 && r % 4 === 0 };
}

/** Helpers that emit WGSL for one plan: element types, strides and loads. */
function gen(s: Sizes) {
  const W = s.vq ? 4 : 1; // f32 per qkv element
  const KC = s.va ? 4 : 1; // keys per att element
  const QT = s.vq ? "vec4<f32>" : "f32";
  const AT = s.va ? "vec4<f32>" : "f32";
  const NJ = s.hs / W; // qkv elements per head row
  const comp = (x: string, c: number) => (KC === 1 ? x : `${x}.${"xyzw"[c]}`);
  const dotE = (a: string, b: string) => (W === 1 ? `${a} * ${b}` : `dot(${a}, ${b})`);
  /** The sum of dot products of two head rows held as `a{j}` and `b{j}`. */
  const rowDot = (a: (j: number) => string, b: (j: number) => string) =>
    Array.from({ length: NJ }, (_, j) => dotE(a(j), b(j))).join(" + ");
  const consts = `const T = ${s.t}u;
const NH = ${s.nh}u;
const BH = ${s.b * s.nh}u;
const C3W = ${(3 * s.c) / W}u;
const CW = ${s.c / W}u;
const HSW = ${NJ}u;
const TW = ${s.t / KC}u;
const SCALE = ${f32Lit(1 / Math.sqrt(s.hs))};
const NEG = -1e30f;`;
  /** Binds lanes to (batch, head) pairs and y to the row block. */
  const prologue = `  let live = gid.x < BH;
  let bh = min(gid.x, BH - 1u);
  let bb = bh / NH;
  let h = bh % NH;
  let t0 = gid.y * ${s.r}u;
  let qb = bb * T * C3W + h * HSW;
  let kb = qb + CW;
  let vb = qb + 2u * CW;
  let ob = bb * T * CW + h * HSW;
  let ab = bh * T * TW;`;
  const bind = (names: [string, "q" | "a"][]) =>
    names.map(([n, k], i) =>
      `@group(0) @binding(${i}) var<storage, read_write> ${n}: array<${k === "q" ? QT : AT}>;`
    ).join("\n");
  /** Rows of the block, qkv elements of a head row, keys of an att element. */
  const rows = [...Array(s.r).keys()];
  const js = [...Array(NJ).keys()];
  const cs = [...Array(KC).keys()];
  /** Lines loading the K (or V) head rows of keys t2..t2+KC-1 as `k{c}_{j}` (or `v{c}_{j}`). */
  const loadKeys = (what: "k" | "v") =>
    cs.flatMap((c) =>
      js.map((j) => `  let ${what}${c}_${j} = qkv[${what}b + (t2 + ${c}u) * C3W + ${j}u];`)
    );
  /** Whether key t2 + c is on or below the diagonal of the block's row r. */
  const mask = (r: number, c: number) => `t2 + ${c}u <= t0 + ${r}u`;
  /** The att (or datt) element of the block's row r at keys t2.. */
  const attAt = (r: number) => `ab + qr${r} * TW + t2 / ${KC}u`;
  /** A store into `buf` at {@linkcode attAt}, skipped for rows past T and idle lanes. */
  const storeRow = (buf: string, r: number, value: string) =>
    `  if (live && t0 + ${r}u < T) { ${buf}[${attAt(r)}] = ${value}; }`;
  /** The whole shader: bindings, constants, and `body` after the prologue. */
  const shader = (names: [string, "q" | "a"][], body: string[]) =>
    `${bind(names)}
${consts}
@compute @workgroup_size(${LANES})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
${prologue}
  ${body.join("\n  ")}
}`;
  return { KC, QT, AT, comp, rowDot, rows, js, cs, loadKeys, mask, attAt, storeRow, shader };
}

function groups(s: Sizes): [number, number] {
  return [Math.ceil((s.b * s.nh) / LANES), Math.ceil(s.t / s.r)];
}

/** WGSL of the forward kernel for `s`. */
function attentionForwardShader(s: Sizes): string {
  const g = gen(s);
  const { KC, rows, js, cs, mask, storeRow } = g;
  const L: string[] = [];
  for (const r of rows) L.push(`let qr${r} = min(t0 + ${r}u, T - 1u);`);
  for (const r of rows) {
    for (const j of js) L.push(`let q${r}_${j} = qkv[qb + qr${r} * C3W + ${j}u] * SCALE;`);
  }
  L.push(`let kEnd = min(t0 + ${s.r}u, T);`);
  for (const r of rows) L.push(`var m${r} = NEG;`, `var l${r} = 0.0;`);
  const score = (r: number, c: number) => g.rowDot((j) => `q${r}_${j}`, (j) => `k${c}_${j}`);
  // Pass 1: row maxima and softmax denominators.
  L.push(`for (var t2 = 0u; t2 < kEnd; t2 += ${KC}u) {`);
  L.push(...g.loadKeys("k"));
  for (const r of rows) {
    for (const c of cs) L.push(`  let s${r}_${c} = select(NEG, ${score(r, c)}, ${mask(r, c)});`);
    const mx = cs.map((c) => `s${r}_${c}`).reduce((a, b) => `max(${a}, ${b})`);
    L.push(`  let mn${r} = max(m${r}, ${mx});`);
    L.push(
      `  l${r} = l${r} * exp(m${r} - mn${r}) + ${
        cs.map((c) => `exp(s${r}_${c} - mn${r})`).join(" + ")
      };`,
    );
    L.push(`  m${r} = mn${r};`);
    L.push(storeRow("att", r, `${g.AT}(${cs.map((c) => `s${r}_${c}`).join(", ")})`));
  }
  L.push(`}`);
  // Pass 2: probabilities and P·V.
  for (const r of rows) L.push(`let il${r} = 1.0 / l${r};`);
  for (const r of rows) for (const j of js) L.push(`var o${r}_${j} = ${g.QT}(0.0);`);
  L.push(`for (var t2 = 0u; t2 < kEnd; t2 += ${KC}u) {`);
  L.push(...g.loadKeys("v"));
  for (const r of rows) {
    L.push(`  let S${r} = att[${g.attAt(r)}];`);
    for (const c of cs) {
      L.push(
        `  let p${r}_${c} = select(0.0, exp(${g.comp(`S${r}`, c)} - m${r}) * il${r}, ${
          mask(r, c)
        });`,
      );
    }
    L.push(storeRow("att", r, `${g.AT}(${cs.map((c) => `p${r}_${c}`).join(", ")})`));
    for (const j of js) {
      L.push(
        `  o${r}_${j} = ${cs.map((c) => `p${r}_${c} * v${c}_${j}`).join(" + ")} + o${r}_${j};`,
      );
    }
  }
  L.push(`}`);
  // Keys after the block are above the diagonal of every row in it.
  L.push(`for (var t2 = kEnd; t2 < T; t2 += ${KC}u) {`);
  for (const r of rows) L.push(storeRow("att", r, `${g.AT}(0.0)`));
  L.push(`}`);
  for (const r of rows) {
    L.push(`if (live && t0 + ${r}u < T) {`);
    for (const j of js) L.push(`  o[ob + qr${r} * CW + ${j}u] = o${r}_${j};`);
    L.push(`}`);
  }
  return g.shader([["qkv", "q"], ["o", "q"], ["att", "a"]], L);
}

/** The bindings of both backward kernels, in the order attentionBackward binds them. */
const BACKWARD_BINDINGS: [string, "q" | "a"][] = [
  ["dqkv", "q"],
  ["datt", "a"],
  ["dout", "q"],
  ["qkv", "q"],
  ["att", "a"],
];

/** WGSL of the backward query-block kernel (score gradients and dq). */
function attentionQueryShader(s: Sizes, accumulate: boolean): string {
  const g = gen(s);
  const acc = (at: string) => (accumulate ? `dqkv[${at}] + ` : "");
  const { KC, rows, js, cs, mask, storeRow } = g;
  const L: string[] = [];
  for (const r of rows) L.push(`let qr${r} = min(t0 + ${r}u, T - 1u);`);
  for (const r of rows) {
    for (const j of js) L.push(`let d${r}_${j} = dout[ob + qr${r} * CW + ${j}u];`);
  }
  L.push(`let kEnd = min(t0 + ${s.r}u, T);`);
  for (const r of rows) L.push(`var ds${r} = 0.0;`);
  const dp = (r: number, c: number) => g.rowDot((j) => `d${r}_${j}`, (j) => `v${c}_${j}`);
  const loadP = (r: number) => L.push(`  let P${r} = att[${g.attAt(r)}];`);
  // Pass 1: dsum = Σ P·dP per row.
  L.push(`for (var t2 = 0u; t2 < kEnd; t2 += ${KC}u) {`);
  L.push(...g.loadKeys("v"));
  for (const r of rows) {
    loadP(r);
    for (const c of cs) L.push(`  let e${r}_${c} = ${dp(r, c)};`);
    L.push(storeRow("datt", r, `${g.AT}(${cs.map((c) => `e${r}_${c}`).join(", ")})`));
    const terms = cs.map((c) => `select(0.0, ${g.comp(`P${r}`, c)} * e${r}_${c}, ${mask(r, c)})`);
    L.push(`  ds${r} = ds${r} + ${terms.join(" + ")};`);
  }
  L.push(`}`);
  // Pass 2: datt = P (dP - dsum), dq += datt · K.
  for (const r of rows) for (const j of js) L.push(`var dq${r}_${j} = ${g.QT}(0.0);`);
  L.push(`for (var t2 = 0u; t2 < kEnd; t2 += ${KC}u) {`);
  L.push(...g.loadKeys("k"));
  for (const r of rows) {
    loadP(r);
    L.push(`  let D${r} = datt[${g.attAt(r)}];`);
    for (const c of cs) {
      L.push(
        `  let g${r}_${c} = select(0.0, ${g.comp(`P${r}`, c)} * (${g.comp(`D${r}`, c)} - ds${r}), ${
          mask(r, c)
        });`,
      );
    }
    L.push(storeRow("datt", r, `${g.AT}(${cs.map((c) => `g${r}_${c}`).join(", ")})`));
    for (const j of js) {
      L.push(
        `  dq${r}_${j} = ${cs.map((c) => `g${r}_${c} * k${c}_${j}`).join(" + ")} + dq${r}_${j};`,
      );
    }
  }
  L.push(`}`);
  for (const r of rows) {
    L.push(`if (live && t0 + ${r}u < T) {`);
    for (const j of js) {
      L.push(`  let iq${r}_${j} = qb + qr${r} * C3W + ${j}u;`);
      L.push(`  dqkv[iq${r}_${j}] = ${acc(`iq${r}_${j}`)}dq${r}_${j} * SCALE;`);
    }
    L.push(`}`);
  }
  return g.shader(BACKWARD_BINDINGS, L);
}

/** WGSL of the backward key-block kernel (dk and dv). */
function attentionKeyShader(s: Sizes, accumulate: boolean): string {
  const g = gen(s);
  const acc = (at: string) => (accumulate ? `dqkv[${at}] + ` : "");
  const { KC, rows, js } = g;
  const L: string[] = [];
  for (const r of rows) L.push(`let kr${r} = min(t0 + ${r}u, T - 1u);`);
  for (const r of rows) {
    for (const j of js) {
      L.push(`var dk${r}_${j} = ${g.QT}(0.0);`, `var dv${r}_${j} = ${g.QT}(0.0);`);
    }
  }
  // Query rows t >= t0; keys of the block above row t's diagonal are masked.
  L.push(`for (var t = t0; t < T; t++) {`);
  for (const j of js) {
    L.push(`  let q${j} = qkv[qb + t * C3W + ${j}u];`);
    L.push(`  let d${j} = dout[ob + t * CW + ${j}u];`);
  }
  for (let e = 0; e < s.r / KC; e++) {
    // The block's keys as att elements; clamped into the row (the excess is masked).
    const col = KC === 1 ? `kr${e}` : `min(t0 / 4u + ${e}u, TW - 1u)`;
    L.push(`  let G${e} = datt[ab + t * TW + ${col}];`);
    L.push(`  let P${e} = att[ab + t * TW + ${col}];`);
  }
  for (const r of rows) {
    const e = Math.floor(r / KC), c = r % KC;
    const ok = `t0 + ${r}u <= t`;
    L.push(`  let g${r} = select(0.0, ${g.comp(`G${e}`, c)}, ${ok});`);
    L.push(`  let p${r} = select(0.0, ${g.comp(`P${e}`, c)}, ${ok});`);
    for (const j of js) {
      L.push(`  dk${r}_${j} = g${r} * q${j} + dk${r}_${j};`);
      L.push(`  dv${r}_${j} = p${r} * d${j} + dv${r}_${j};`);
    }
  }
  L.push(`}`);
  for (const r of rows) {
    L.push(`if (live && t0 + ${r}u < T) {`);
    for (const j of js) {
      L.push(`  let ik${r}_${j} = kb + kr${r} * C3W + ${j}u;`);
      L.push(`  dqkv[ik${r}_${j}] = ${acc(`ik${r}_${j}`)}dk${r}_${j} * SCALE;`);
      L.push(`  dqkv[ik${r}_${j} + CW] = ${acc(`ik${r}_${j} + CW`)}dv${r}_${j};`);
    }
    L.push(`}`);
  }
  return g.shader(BACKWARD_BINDINGS, L);
}

/**
 * Forward: each invocation writes att[b,h,t,:] and out[b,t,h*hs..] for a block
 * of query rows t of one (batch, head) pair.
 *
 * @example
 * ```ts ignore
 * gpu.run([attentionForward(gpu, { qkv, out: atty, att }, { b: B, t: T, c: C, nh: NH })]);
 * ```
 */
export function attentionForward(
  gpu: Gpu,
  bufs: { qkv: TensorRef; out: TensorRef; att: TensorRef },
  shape: AttentionShape,
): Dispatch {
  const kernel = "attentionForward";
  const s = sizes(kernel, shape);
  const { b, t, c, nh } = s;
  const refs = [
    slice(checkRef(kernel, "qkv", bufs.qkv, b * t * 3 * c), b * t * 3 * c),
    slice(checkRef(kernel, "out", bufs.out, b * t * c), b * t * c),
    slice(checkRef(kernel, "att", bufs.att, b * nh * t * t), b * nh * t * t),
  ];
  const code = attentionForwardShader(s);
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, groups(s));
}

/**
 * Backward: accumulates dqkv (+=) from dout [B,T,C], qkv and the saved att,
 * or with `accumulate: false` writes it (every element is written once, so
 * the caller need not clear it first). Two dispatches (query blocks, then key
 * blocks); see the module comment.
 *
 * @example
 * ```ts ignore
 * gpu.run(attentionBackward(gpu, { dqkv, dout: datty, qkv, att }, { b: B, t: T, c: C, nh: NH }));
 * ```
 */
export function attentionBackward(
  gpu: Gpu,
  bufs: { dqkv: TensorRef; datt?: TensorRef; dout: TensorRef; qkv: TensorRef; att: TensorRef },
  shape: AttentionShape,
  options: { accumulate?: boolean } = {},
): Dispatch[] {
  const kernel = "attentionBackward";
  const accumulate = options.accumulate ?? true;
  const s = sizes(kernel, shape);
  const { b, t, c, nh } = s;
  const nAtt = b * nh * t * t;
  const dqkv = slice(checkRef(kernel, "dqkv", bufs.dqkv, b * t * 3 * c), b * t * 3 * c);
  const datt = slice(
    bufs.datt
      ? checkRef(kernel, "datt", bufs.datt, nAtt)
      : scratch(gpu, nAtt, "attentionBackward datt"),
    nAtt,
  );
  const dout = slice(checkRef(kernel, "dout", bufs.dout, b * t * c), b * t * c);
  const qkv = slice(checkRef(kernel, "qkv", bufs.qkv, b * t * 3 * c), b * t * 3 * c);
  const att = slice(checkRef(kernel, "att", bufs.att, nAtt), nAtt);
  const refs = [dqkv, datt, dout, qkv, att];
  const q = `${kernel} queries`, k = `${kernel} keys`;
  return [
    gpu.dispatch(
      q,
      gpu.pipeline(attentionQueryShader(s, accumulate), "main", q),
      refs,
      groups(s),
    ),
    gpu.dispatch(k, gpu.pipeline(attentionKeyShader(s, accumulate), "main", k), refs, groups(s)),
  ];
}
