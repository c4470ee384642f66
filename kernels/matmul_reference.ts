/**
 * Plain-TypeScript references for the matmul kernels, used as the test
 * oracle. Sums run in f64 and round once to f32 at the end.
 *
 * @module
 */

/** The inputs of {@linkcode matmulReference}. */
export interface MatmulReferenceInputs {
  /** A stored [m,k], or [k,m] with `transA`. */
  a: Float32Array;
  /** B stored [k,n], or [n,k] with `transB`. */
  b: Float32Array;
  /** The prior contents of C [m,n]; read only with `accumulate`. */
  c?: Float32Array;
  /** Bias [n], added to every row. */
  bias?: Float32Array;
}

/** The shape of {@linkcode matmulReference}: the same options the GPU kernel takes. */
export interface MatmulReferenceShape {
  /** Rows of C. */
  m: number;
  /** Columns of C. */
  n: number;
  /** The contracted dimension. */
  k: number;
  /** A is stored [k,m]. */
  transA?: boolean;
  /** B is stored [n,k]. */
  transB?: boolean;
  /** C += ... instead of C = ... */
  accumulate?: boolean;
}

/**
 * C[m,n] (+)= op(A)·op(B) (+ bias), computed in f64 and rounded to f32.
 *
 * @example Multiply a 1x2 by a 2x1 matrix
 * ```ts
 * import { matmulReference } from "./matmul_reference.ts";
 * const c = matmulReference(
 *   { a: new Float32Array([1, 2]), b: new Float32Array([3, 4]) },
 *   { m: 1, n: 1, k: 2 },
 * );
 * console.log(c[0]); // 11
 * ```
 */
export function matmulReference(
  inputs: MatmulReferenceInputs,
  shape: MatmulReferenceShape,
): Float32Array {
  const { a, b, c, bias } = inputs;
  const { m, n, k, transA = false, transB = false, accumulate = false } = shape;
  if (a.length < m * k) throw new RangeError(`Cannot multiply: a has ${a.length} < m*k elements`);
  if (b.length < k * n) throw new RangeError(`Cannot multiply: b has ${b.length} < k*n elements`);
  if (accumulate && (!c || c.length < m * n)) {
    throw new RangeError("Cannot accumulate: c is missing or shorter than m*n");
  }
  if (bias && bias.length < n) throw new RangeError(`Cannot add bias: length ${bias.length} < n`);
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        const av = transA ? a[p * m + i] : a[i * k + p];
        const bv = transB ? b[j * k + p] : b[p * n + j];
        s += av * bv;
      }
      if (bias) s += bias[j];
      if (accumulate) s += c![i * n + j];
      out[i * n + j] = s;
    }
  }
  return out;
}

/**
 * dbias[cols] (+)= the column sums of dout[rows, cols], in f64 rounded to f32.
 *
 * @example
 * ```ts
 * import { biasBackwardReference } from "./matmul_reference.ts";
 * const d = biasBackwardReference(new Float32Array([1, 2, 3, 4]), { rows: 2, cols: 2 });
 * console.log(d); // Float32Array [4, 6]
 * ```
 */
export function biasBackwardReference(
  dout: Float32Array,
  shape: { rows: number; cols: number; dbias?: Float32Array },
): Float32Array {
  const { rows, cols, dbias } = shape;
  const out = new Float32Array(cols);
  for (let j = 0; j < cols; j++) {
    let s = dbias ? dbias[j] : 0;
    for (let i = 0; i < rows; i++) s += dout[i * cols + j];
    out[j] = s;
  }
  return out;
}
