// Singular values and ranks of small dense matrices, on the CPU in f64.
// They measure the rank of a layer's accumulated update ΔW. For BPT,
// A(W + UV)B − W can reach rank min(n, m, 2·rank(W) + r) at every step, while
// LoRA's update stays at rank ≤ r.

/**
 * Singular values of an n×m row-major matrix, largest first, by one-sided
 * Jacobi rotations (Hestenes) on the columns of the narrower orientation.
 * Cost O(sweeps · n · m · min(n, m)): meant for layers up to about 1024 wide.
 */
export function singularValues(a: ArrayLike<number>, n: number, m: number): Float64Array {
  // Work on the orientation with fewer columns: rows×cols with cols = min(n, m).
  const transpose = m > n;
  const rows = transpose ? m : n;
  const cols = transpose ? n : m;
  // Column-major copy: column j occupies [j·rows, (j+1)·rows).
  const x = new Float64Array(rows * cols);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) {
      const v = a[i * m + j];
      if (transpose) x[i * rows + j] = v;
      else x[j * rows + i] = v;
    }
  }

  const eps = 1e-15;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < cols - 1; p++) {
      for (let q = p + 1; q < cols; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        const op = p * rows;
        const oq = q * rows;
        for (let i = 0; i < rows; i++) {
          const xp = x[op + i];
          const xq = x[oq + i];
          alpha += xp * xp;
          beta += xq * xq;
          gamma += xp * xq;
        }
        if (Math.abs(gamma) <= eps * Math.sqrt(alpha * beta) || gamma === 0) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < rows; i++) {
          const xp = x[op + i];
          const xq = x[oq + i];
          x[op + i] = c * xp - s * xq;
          x[oq + i] = s * xp + c * xq;
        }
      }
    }
    if (!rotated) break;
  }

  const sv = new Float64Array(cols);
  for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let i = 0; i < rows; i++) s += x[j * rows + i] ** 2;
    sv[j] = Math.sqrt(s);
  }
  return sv.sort().reverse();
}

/**
 * Numerical rank: the count of singular values above `relTol` · σ_max.
 * The default 1e-6 sits far above f64 rounding of the SVD (~1e-13 relative)
 * and below the smallest direction a few optimizer steps add to a unit-scale
 * matrix. Pass a larger tolerance for updates measured from bf16 weights.
 */
export function numericalRank(sv: ArrayLike<number>, relTol = 1e-6): number {
  const max = sv.length > 0 ? sv[0] : 0;
  if (max === 0) return 0;
  let r = 0;
  for (let i = 0; i < sv.length; i++) if (sv[i] > relTol * max) r++;
  return r;
}

/**
 * Entropy effective rank exp(H(p)) with p_i = σ_i / Σσ (Roy and Vetterli, 2007):
 * a smooth count of the directions that carry the update's energy.
 */
export function effectiveRank(sv: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < sv.length; i++) total += sv[i];
  if (total === 0) return 0;
  let h = 0;
  for (let i = 0; i < sv.length; i++) {
    const p = sv[i] / total;
    if (p > 0) h -= p * Math.log(p);
  }
  return Math.exp(h);
}
