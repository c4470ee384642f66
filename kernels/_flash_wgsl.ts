/**
 * WGSL generation for kernels/flash_attention.ts: the plan (tile sizes chosen
 * from the head size and the device's workgroup-memory limit) and the three
 * shaders (forward, backward queries, backward keys). See that module's doc
 * for the tiling; this file only writes the code.
 *
 * Every kernel binds one invocation to one row (a query row, or a key row in
 * the key passes) of one (batch, head) pair: workgroup x is the (batch, head)
 * pair, workgroup y the row tile, heaviest first. Under the causal mask a
 * query tile's work grows with its position and a key tile's shrinks, so the
 * forward and the query pass take the last tile first and the key passes the
 * first: GPUs commonly start workgroups in x-fastest order, so every
 * pair's heaviest tile is started before any lighter one and the light ones
 * fill the tail (longest job first, the classic rule for jobs of unequal
 * length). The row's head vectors live in named registers (`q0`, `q1`, ...:
 * no dynamically indexed private arrays), the other operand is staged tile
 * by tile in workgroup memory.
 *
 * @module
 */
import { f32Lit } from "./_wgsl.ts";

/** Rows per workgroup, one per invocation: 64 fills a GPU's SIMD units twice over. */
const ROWS = 64;

/** Rows per workgroup when T is short, so a workgroup is not mostly idle lanes. */
const ROWS_SHORT = 32;

/** Staged tile heights tried, largest first; multiples of 4 (the forward takes 4 keys a step). */
const TILES = [64, 32, 16, 8, 4];

/** The largest head size kept in registers (the key pass holds 4 head rows per invocation). */
export const MAX_HEAD_SIZE = 256;

/**
 * How the backward sums dk and dv: "fused", in one key pass (k, v, dk and dv
 * in registers: 4 head rows per invocation), or "split", dv in a first pass
 * (k and dv: 2 rows) and dk in a second (k, v and dk: 3 rows), which computes
 * each probability once more (the backward's FLOPs grow by a sixth) to hold a
 * quarter fewer registers at the peak.
 */
export type KeyPass = "fused" | "split";

/**
 * The most f32 registers the key pass's head rows may take before it is
 * split: 192, so that at head size 64 (GPT-2's) the fused pass's 256 floats of
 * rows alone, over NVIDIA's 255 registers per thread before any address or
 * temporary, become passes of 128 and 192.
 */
const FUSED_KEY_PASS_MAX_FLOATS = 192;

/** The key pass used when none is asked for: fused while its 4 head rows fit the budget above. */
export function defaultKeyPass(hs: number): KeyPass {
  return 4 * hs <= FUSED_KEY_PASS_MAX_FLOATS ? "fused" : "split";
}

/** The sizes one set of flash-attention kernels is generated for. */
export interface FlashPlan {
  b: number;
  t: number;
  c: number;
  nh: number;
  /** Head size c / nh. */
  hs: number;
  /** f32 per element of qkv, out and dout: 4 (vec4) when hs is a multiple of 4, else 1. */
  w: 1 | 4;
  /** Rows per workgroup (= invocations per workgroup). */
  rows: number;
  /** Keys staged per tile by the forward and the backward query pass. */
  keyTile: number;
  /** Query rows staged per tile by the backward key pass. */
  queryTile: number;
}

/** Workgroup bytes of the forward and query passes: K and V tiles. */
export function keyPassBytes(tile: number, hs: number): number {
  return 2 * tile * hs * 4;
}

/** Workgroup bytes of the key pass: Q and dout tiles plus lse and D per row. */
export function queryTileBytes(tile: number, hs: number): number {
  return tile * (2 * hs + 2) * 4;
}

/**
 * The plan for `shape` on a device allowing `wgBytes` of workgroup memory;
 * throws a RangeError naming what does not fit.
 */
export function flashPlan(
  kernel: string,
  shape: { b: number; t: number; c: number; nh: number },
  wgBytes: number,
): FlashPlan {
  const { b, t, c, nh } = shape;
  const hs = c / nh;
  if (hs > MAX_HEAD_SIZE) {
    throw new RangeError(
      `Cannot build ${kernel}: head size ${hs} exceeds ${MAX_HEAD_SIZE}, the most kept in registers`,
    );
  }
  const pick = (bytes: (tile: number) => number, what: string) => {
    const tile = TILES.find((x) => bytes(x) <= wgBytes);
    if (tile === undefined) {
      throw new RangeError(
        `Cannot build ${kernel}: ${what} of head size ${hs} need ${bytes(4)} bytes of ` +
          `workgroup memory, the device allows ${wgBytes}`,
      );
    }
    return tile;
  };
  return {
    b,
    t,
    c,
    nh,
    hs,
    w: hs % 4 === 0 ? 4 : 1,
    rows: t > ROWS_SHORT ? ROWS : ROWS_SHORT,
    keyTile: pick((x) => keyPassBytes(x, hs), "K and V tiles"),
    queryTile: pick((x) => queryTileBytes(x, hs), "Q and dout tiles"),
  };
}

/** Code pieces shared by the three shaders. */
function gen(p: FlashPlan) {
  const W = p.w;
  const E = W === 4 ? "vec4<f32>" : "f32";
  const HSW = p.hs / W;
  const js = [...Array(HSW).keys()];
  /** `a(j)·b(j)` summed over the head row. */
  const dot = (a: (j: number) => string, b: (j: number) => string) =>
    js.map((j) => (W === 4 ? `dot(${a(j)}, ${b(j)})` : `${a(j)} * ${b(j)}`)).join(" + ");
  /** One `let`/`var` per element of a head row. */
  const row = (decl: string, name: string, value: (j: number) => string) =>
    js.map((j) => `  ${decl} ${name}${j} = ${value(j)};`);
  const header = (
    binds: [string, string][],
    shared: [string, string, number][],
    heavy: "last" | "first",
  ) =>
    `${
      binds.map(([n, t], i) =>
        `@group(0) @binding(${i}) var<storage, read_write> ${n}: array<${t}>;`
      ).join("\n")
    }
${shared.map(([n, t, len]) => `var<workgroup> ${n}: array<${t}, ${len}>;`).join("\n")}
const T = ${p.t}u;
const NH = ${p.nh}u;
const C3W = ${(3 * p.c) / W}u;
const CW = ${p.c / W}u;
const HSW = ${HSW}u;
const R = ${p.rows}u;
const NT = ${Math.ceil(p.t / p.rows)}u;
const SCALE = ${f32Lit(1 / Math.sqrt(p.hs))};
const NEG = -1e30f;

@compute @workgroup_size(${p.rows})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.x;
  let bb = bh / NH;
  let h = bh % NH;
  let r0 = ${heavy === "last" ? "(NT - 1u - wid.y)" : "wid.y"} * R;
  let live = r0 + lid < T;
  // Rows past T compute on row T-1's data (uniform barriers) and store nothing.
  let tr = min(r0 + lid, T - 1u);
  let qb = bb * T * C3W + h * HSW;
  let kb = qb + CW;
  let vb = qb + 2u * CW;
  let ob = bb * T * CW + h * HSW;
  let lb = bh * T;`;
  /** Cooperative copy of `tile` head rows from `t0` of `src` (row stride `stride`) per pair. */
  const stage = (tile: number, pairs: [string, string, string][]) =>
    `    for (var e = lid; e < ${tile * HSW}u; e += R) {
      let rr = min(t0 + e / HSW, T - 1u);
      let jj = e % HSW;
${
      pairs.map(([dst, src, at]) =>
        `      ${dst}[e] = ${src}[${at} + rr * ${src === "qkv" ? "C3W" : "CW"} + jj];`
      ).join("\n")
    }
    }`;
  return { E, HSW, js, dot, row, header, stage };
}

/** WGSL of the forward: out and lse for one query tile of one (batch, head) pair. */
export function forwardShader(p: FlashPlan): string {
  const g = gen(p);
  const S = p.keyTile;
  const ks = [0, 1, 2, 3];
  const at = (k: number, j: number) => `a + ${k * g.HSW + j}u`;
  const L: string[] = [
    g.header(
      [["qkv", g.E], ["o", g.E], ["lse", "f32"]],
      [["Ks", g.E, S * g.HSW], ["Vs", g.E, S * g.HSW]],
      "last",
    ),
    ...g.row("let", "q", (j) => `qkv[qb + tr * C3W + ${j}u] * SCALE`),
    ...g.row("var", "o", () => `${g.E}(0.0)`),
    `  var m = NEG;`,
    `  var l = 0.0;`,
    // Key tiles past the workgroup's last row lie above every row's diagonal: never loaded.
    `  let nst = (min(r0 + R, T) - 1u) / ${S}u + 1u;`,
    `  for (var st = 0u; st < nst; st++) {`,
    `    let t0 = st * ${S}u;`,
    g.stage(S, [["Ks", "qkv", "kb"], ["Vs", "qkv", "vb"]]),
    `    workgroupBarrier();`,
    // Four keys a step, one rescale of o per step; the loop stops at this row's diagonal.
    `    for (var j = 0u; j < ${S}u && t0 + j <= tr; j += 4u) {`,
    `      let a = j * HSW;`,
    ...ks.map((k) =>
      `      let s${k} = select(NEG, ${
        g.dot((j) => `q${j}`, (j) => `Ks[${at(k, j)}]`)
      }, t0 + j + ${k}u <= tr);`
    ),
    `      let mn = max(m, max(max(s0, s1), max(s2, s3)));`,
    `      let cr = exp(m - mn);`,
    ...ks.map((k) => `      let p${k} = select(0.0, exp(s${k} - mn), t0 + j + ${k}u <= tr);`),
    `      l = l * cr + ((p0 + p1) + (p2 + p3));`,
    ...g.js.map((j) =>
      `      o${j} = o${j} * cr + ${ks.map((k) => `p${k} * Vs[${at(k, j)}]`).join(" + ")};`
    ),
    `      m = mn;`,
    `    }`,
    `    workgroupBarrier();`,
    `  }`,
    `  if (live) {`,
    `    let il = 1.0 / l;`,
    ...g.js.map((j) => `    o[ob + tr * CW + ${j}u] = o${j} * il;`),
    `    lse[lb + tr] = m + log(l);`,
    `  }`,
    `}`,
  ];
  return L.join("\n");
}

/** `dqkv[at] = value`, or `+=` when accumulating. */
function store(accumulate: boolean, at: string, value: string): string {
  return `dqkv[${at}] = ${accumulate ? `dqkv[${at}] + ` : ""}${value};`;
}

/**
 * WGSL of the backward query pass: D = rowsum(dout ∘ out) per row (kept for
 * the key pass) and dq = dS·K, recomputing P from lse.
 */
export function queryShader(p: FlashPlan, accumulate: boolean): string {
  const g = gen(p);
  const S = p.keyTile;
  const L: string[] = [
    g.header(
      [["dqkv", g.E], ["dout", g.E], ["qkv", g.E], ["o", g.E], ["lse", "f32"], ["dsum", "f32"]],
      [["Ks", g.E, S * g.HSW], ["Vs", g.E, S * g.HSW]],
      "last",
    ),
    ...g.row("let", "q", (j) => `qkv[qb + tr * C3W + ${j}u] * SCALE`),
    ...g.row("let", "d", (j) => `dout[ob + tr * CW + ${j}u]`),
    `  let D = ${g.dot((j) => `d${j}`, (j) => `o[ob + tr * CW + ${j}u]`)};`,
    `  let ls = lse[lb + tr];`,
    `  if (live) { dsum[lb + tr] = D; }`,
    ...g.row("var", "dq", () => `${g.E}(0.0)`),
    `  let nst = (min(r0 + R, T) - 1u) / ${S}u + 1u;`,
    `  for (var st = 0u; st < nst; st++) {`,
    `    let t0 = st * ${S}u;`,
    g.stage(S, [["Ks", "qkv", "kb"], ["Vs", "qkv", "vb"]]),
    `    workgroupBarrier();`,
    `    for (var j = 0u; j < ${S}u && t0 + j <= tr; j++) {`,
    `      let a = j * HSW;`,
    `      let pr = exp(${g.dot((j) => `q${j}`, (j) => `Ks[a + ${j}u]`)} - ls);`,
    `      let ds = pr * (${g.dot((j) => `d${j}`, (j) => `Vs[a + ${j}u]`)} - D);`,
    ...g.js.map((j) => `      dq${j} = ds * Ks[a + ${j}u] + dq${j};`),
    `    }`,
    `    workgroupBarrier();`,
    `  }`,
    `  if (live) {`,
    ...g.js.map((j) => `    ${store(accumulate, `qb + tr * C3W + ${j}u`, `dq${j} * SCALE`)}`),
    `  }`,
    `}`,
  ];
  return L.join("\n");
}

/** The gradients one key-pass dispatch sums: both, or one of them (see {@linkcode KeyPass}). */
export type KeyGrads = "dk+dv" | "dk" | "dv";

/**
 * WGSL of a backward key pass: for one key tile, dv = Pᵀ·dout and/or
 * dk = dSᵀ·Q summed over the query rows at or after each key. The dv-only
 * pass needs neither v nor D, so it binds no `dsum`.
 */
export function keyShader(p: FlashPlan, accumulate: boolean, grads: KeyGrads = "dk+dv"): string {
  const g = gen(p);
  const S = p.queryTile;
  const wantK = grads !== "dv", wantV = grads !== "dk";
  const binds: [string, string][] = [["dqkv", g.E], ["dout", g.E], ["qkv", g.E], ["lse", "f32"]];
  const shared: [string, string, number][] = [
    ["Qs", g.E, S * g.HSW],
    ["Os", g.E, S * g.HSW],
    ["Ls", "f32", S],
  ];
  if (wantK) {
    binds.push(["dsum", "f32"]);
    shared.push(["Ds", "f32", S]);
  }
  const L: string[] = [
    g.header(binds, shared, "first"),
    ...g.row("let", "k", (j) => `qkv[kb + tr * C3W + ${j}u] * SCALE`),
    ...(wantK ? g.row("let", "v", (j) => `qkv[vb + tr * C3W + ${j}u]`) : []),
    ...(wantK ? g.row("var", "dk", () => `${g.E}(0.0)`) : []),
    ...(wantV ? g.row("var", "dv", () => `${g.E}(0.0)`) : []),
    // Query tiles before the workgroup's first key lie above every key's diagonal.
    `  for (var st = r0 / ${S}u; st < ${Math.ceil(p.t / S)}u; st++) {`,
    `    let t0 = st * ${S}u;`,
    g.stage(S, [["Qs", "qkv", "qb"], ["Os", "dout", "ob"]]),
    `    for (var e = lid; e < ${S}u; e += R) {`,
    `      let rr = min(t0 + e, T - 1u);`,
    `      Ls[e] = lse[lb + rr];`,
    ...(wantK ? [`      Ds[e] = dsum[lb + rr];`] : []),
    `    }`,
    `    workgroupBarrier();`,
    // Rows before this key's diagonal are skipped; rows past T are not in the tile's range.
    `    let iEnd = min(${S}u, T - t0);`,
    `    for (var i = select(0u, tr - t0, tr > t0); i < iEnd; i++) {`,
    `      let a = i * HSW;`,
    `      let pr = exp(${g.dot((j) => `k${j}`, (j) => `Qs[a + ${j}u]`)} - Ls[i]);`,
    ...(wantV ? g.js.map((j) => `      dv${j} = pr * Os[a + ${j}u] + dv${j};`) : []),
    ...(wantK
      ? [
        `      let ds = pr * (${g.dot((j) => `v${j}`, (j) => `Os[a + ${j}u]`)} - Ds[i]);`,
        ...g.js.map((j) => `      dk${j} = ds * Qs[a + ${j}u] + dk${j};`),
      ]
      : []),
    `    }`,
    `    workgroupBarrier();`,
    `  }`,
    `  if (live) {`,
    ...g.js.flatMap((j) => [
      ...(wantK ? [`    ${store(accumulate, `kb + tr * C3W + ${j}u`, `dk${j} * SCALE`)}`] : []),
      ...(wantV ? [`    ${store(accumulate, `vb + tr * C3W + ${j}u`, `dv${j}`)}`] : []),
    ]),
    `  }`,
    `}`,
  ];
  return L.join("\n");
}
