/**
 * Matmul variants shaped for CPU adapters (llvmpipe, lavapipe), where
 * storage-buffer loads, not arithmetic, set the speed: `naive`, and the
 * register-blocked `reg{R}x{C}` and `lane{R}x{C}` families with their `w`,
 * `k` and `v` suffixes (see `matmul.ts` for what each measured).
 *
 * @module
 */
import { DIMS, header, type Layout, type Plan, store, u } from "./_matmul_wgsl.ts";

function naivePlan(l: Layout): Plan {
  const aIdx = l.transA ? `p * M + i` : `i * K + p`;
  const bIdx = l.transB ? `j * K + p` : `p * N + j`;
  const code = `${header(l)}
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${DIMS}
  let j = gid.x;
  let i = gid.y;
  if (i >= M || j >= N) { return; }
  var acc = 0.0;
  var bsum = 0.0;
  for (var p = 0u; p < K; p++) {
    let b = B[${bIdx}];
    acc = fma(A[${aIdx}], b, acc);
    ${l.colSum ? "bsum += b;" : ""}
  }
  ${store(l, "i", "j", "acc")}
  ${l.colSum ? "if (i == 0u) { colSum[j] = colSum[j] + bsum; }" : ""}
}
`;
  return { code, workgroups: [Math.ceil(l.n / 8), Math.ceil(l.m / 8), 1] };
}

interface RegParams {
  /** Rows per invocation. */
  r: number;
  /** Columns per invocation. */
  c: number;
  /** Invocations per workgroup (along n). */
  w: number;
  /** "block": contiguous columns per invocation; "lane": rows shared by the workgroup. */
  mode: "block" | "lane";
  /** Load 4 consecutive elements at once where the layout and sizes allow it. */
  vec: boolean;
  /** Steps of k per loop iteration: each accumulator is read and written once per `unroll` FMAs. */
  unroll: number;
}

/**
 * Register-blocked kernel. Load indices are clamped into range so that the
 * inner loop has no branches; only the stores are guarded.
 */
function regPlan(l: Layout, p: RegParams): Plan {
  const { r: R, c: C, w: W, mode } = p;
  // Strides: A(i, kk) = A[i*sAi + kk*sAk]; B(kk, j) = B[j*sBj + kk*sBk].
  const sAi = l.transA ? "1u" : "K";
  const sAk = l.transA ? "M" : "1u";
  const sBj = l.transB ? "K" : "1u";
  const sBk = l.transB ? "1u" : "N";
  const lines: string[] = [];
  if (mode === "block") {
    lines.push(`let row0 = wg.y * ${u(R)};`);
    lines.push(`let col0 = (wg.x * ${u(W)} + lid.x) * ${u(C)};`);
  } else {
    lines.push(`let row0 = wg.y * ${u(R)};`);
    lines.push(`let col0 = wg.x * ${u(W * C)} + lid.x;`);
  }
  const colStep = mode === "block" ? 1 : W;
  // vec4 loads: along the block's own dimension, B's columns (not transposed) and A's rows
  // (transposed), which needs 4-aligned blocks and sizes; or along k, 4 steps at once, for
  // an operand whose k is its contiguous dimension (A not transposed, B transposed), which
  // needs k a multiple of 4. Otherwise scalar loads. On llvmpipe a load costs about the
  // same whatever its width, so a vec4 is 4 loads for the price of one.
  const vecB = p.vec && mode === "block" && !l.transB && C % 4 === 0 && l.n % 4 === 0;
  const vecA = p.vec && l.transA && R % 4 === 0 && l.m % 4 === 0;
  const vecAk = p.vec && !l.transA && l.k % 4 === 0;
  const vecBk = p.vec && l.transB && l.k % 4 === 0;
  const kVec = vecAk || vecBk;
  if (vecA) {
    for (let i = 0; i < R / 4; i++) {
      lines.push(`let aq${i} = min(row0 / 4u + ${u(i)}, M / 4u - 1u);`);
    }
  } else if (vecAk) {
    for (let i = 0; i < R; i++) lines.push(`let ar${i} = min(row0 + ${u(i)}, M - 1u) * (K / 4u);`);
  } else {
    for (let i = 0; i < R; i++) lines.push(`let ar${i} = min(row0 + ${u(i)}, M - 1u) * ${sAi};`);
  }
  if (vecB) {
    for (let j = 0; j < C / 4; j++) {
      lines.push(`let bq${j} = min(col0 / 4u + ${u(j)}, N / 4u - 1u);`);
    }
  } else if (vecBk) {
    for (let j = 0; j < C; j++) {
      lines.push(`let bc${j} = min(col0 + ${u(j * colStep)}, N - 1u) * (K / 4u);`);
    }
  } else {
    for (let j = 0; j < C; j++) {
      lines.push(`let bc${j} = min(col0 + ${u(j * colStep)}, N - 1u) * ${sBj};`);
    }
  }
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C; j++) lines.push(`var c${i}_${j} = 0.0;`);
  }
  // Column sums of B: every workgroup keeps them (branch-free, C adds per k against R·C
  // FMAs); the first row of workgroups stores them.
  if (l.colSum) { for (let j = 0; j < C; j++) lines.push(`var s${j} = 0.0;`); }
  const ak = (kk: string) => (sAk === "1u" ? kk : `(${kk}) * ${sAk}`);
  const bk = (kk: string) => (sBk === "1u" ? kk : `(${kk}) * ${sBk}`);
  /**
   * One pass over `steps` consecutive k. B's values for every step are loaded first; then
   * row by row (4 rows per vec4 of a transposed A), A's values and the row's FMAs, each
   * accumulator's in k order. Loading A next to its use keeps few values live: llvmpipe
   * holds each in a SIMD register per component, and a body that loads all of A first
   * spills them (2x the time at n = 64).
   */
  const body = (steps: number): void => {
    const kAt = (s: number) => (s === 0 ? "kk" : `kk + ${u(s)}`);
    if (steps === 4 && vecBk) {
      for (let j = 0; j < C; j++) {
        lines.push(`  let bk${j} = B[bc${j} + kk / 4u];`);
        for (let s = 0; s < 4; s++) lines.push(`  let b${j}_${s} = bk${j}.${"xyzw"[s]};`);
      }
    } else {
      for (let s = 0; s < steps; s++) {
        if (vecB) {
          for (let j = 0; j < C / 4; j++) {
            lines.push(`  let bv${j}_${s} = B[bq${j} + (${kAt(s)}) * (N / 4u)];`);
            for (let t = 0; t < 4; t++) {
              lines.push(`  let b${4 * j + t}_${s} = bv${j}_${s}.${"xyzw"[t]};`);
            }
          }
        } else {
          for (let j = 0; j < C; j++) lines.push(`  let b${j}_${s} = B[bc${j} + ${bk(kAt(s))}];`);
        }
      }
    }
    const group = vecA ? 4 : 1;
    for (let i0 = 0; i0 < R; i0 += group) {
      if (steps === 4 && vecAk) {
        lines.push(`  let ak${i0} = A[ar${i0} + kk / 4u];`);
        for (let s = 0; s < 4; s++) lines.push(`  let a${i0}_${s} = ak${i0}.${"xyzw"[s]};`);
      } else if (vecA) {
        const q = i0 / 4;
        for (let s = 0; s < steps; s++) {
          lines.push(`  let av${q}_${s} = A[aq${q} + (${kAt(s)}) * (M / 4u)];`);
          for (let t = 0; t < 4; t++) {
            lines.push(`  let a${i0 + t}_${s} = av${q}_${s}.${"xyzw"[t]};`);
          }
        }
      } else {
        for (let s = 0; s < steps; s++) {
          lines.push(`  let a${i0}_${s} = A[ar${i0} + ${ak(kAt(s))}];`);
        }
      }
      for (let i = i0; i < i0 + group; i++) {
        for (let j = 0; j < C; j++) {
          for (let s = 0; s < steps; s++) {
            lines.push(`  c${i}_${j} = fma(a${i}_${s}, b${j}_${s}, c${i}_${j});`);
          }
        }
      }
    }
    if (l.colSum) {
      for (let j = 0; j < C; j++) {
        for (let s = 0; s < steps; s++) lines.push(`  s${j} += b${j}_${s};`);
      }
    }
  };
  lines.push(`var kk = 0u;`);
  if (kVec) {
    // k is a multiple of 4 here: no remainder loop.
    lines.push(`for (; kk < K; kk += 4u) {`);
    body(4);
    lines.push(`}`);
  } else {
    if (p.unroll > 1) {
      lines.push(`for (; kk + ${u(p.unroll - 1)} < K; kk += ${u(p.unroll)}) {`);
      body(p.unroll);
      lines.push(`}`);
    }
    lines.push(`for (; kk < K; kk++) {`);
    body(1);
    lines.push(`}`);
  }
  // Outputs leave as vec4s when an invocation's columns are contiguous and 4-aligned.
  const vecC = mode === "block" && C % 4 === 0 && l.n % 4 === 0;
  const cw = vecC ? 4 : 1;
  for (let i = 0; i < R; i++) {
    lines.push(`if (row0 + ${u(i)} < M) {`);
    lines.push(`  let row = row0 + ${u(i)};`);
    for (let j = 0; j < C; j += cw) {
      const acc = vecC
        ? `vec4<f32>(${[0, 1, 2, 3].map((t) => `c${i}_${j + t}`).join(", ")})`
        : `c${i}_${j}`;
      lines.push(`  if (col0 + ${u(j * colStep)} < N) {`);
      lines.push(`    let col = col0 + ${u(j * colStep)};`);
      lines.push(`    ${store(l, "row", "col", acc, vecC)}`);
      lines.push(`  }`);
    }
    lines.push(`}`);
  }
  if (l.colSum) {
    lines.push(`if (wg.y == 0u) {`);
    for (let j = 0; j < C; j++) {
      lines.push(`  if (col0 + ${u(j * colStep)} < N) {`);
      lines.push(
        `    colSum[col0 + ${u(j * colStep)}] = colSum[col0 + ${u(j * colStep)}] + s${j};`,
      );
      lines.push(`  }`);
    }
    lines.push(`}`);
  }
  const code = `${header(l, vecA || vecAk, vecB || vecBk, vecC)}
@compute @workgroup_size(${W}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${DIMS}
  ${lines.join("\n  ")}
}
`;
  const perGroupCols = W * C;
  return {
    code,
    workgroups: [Math.ceil(l.n / perGroupCols), Math.ceil(l.m / R), 1],
  };
}

const REG_NAME = /^(reg|lane)(\d+)x(\d+)(?:w(\d+))?(?:k(\d+))?(v?)$/;

/**
 * The pass of a CPU-shaped variant (`naive`, `reg...`, `lane...`), or null if
 * the name is not one of them.
 */
export function cpuPlan(variant: string, l: Layout): Plan | null {
  if (variant === "naive") return naivePlan(l);
  const m = REG_NAME.exec(variant);
  if (!m) return null;
  const r = Number(m[2]), c = Number(m[3]), w = m[4] ? Number(m[4]) : 8;
  const unroll = m[5] ? Number(m[5]) : 1;
  if (r < 1 || c < 1 || r * c > 4096 || w < 1 || w > 256 || unroll < 1 || unroll > 16) {
    throw new RangeError(
      `Invalid matmul variant: ${variant} (need 1 <= R*C <= 4096, 1 <= W <= 256, 1 <= k <= 16)`,
    );
  }
  return regPlan(l, {
    r,
    c,
    w,
    unroll,
    vec: m[6] === "v",
    mode: m[1] === "reg" ? "block" : "lane",
  });
}
