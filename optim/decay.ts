// The default rule for which parameters get weight decay.

/**
 * Returns whether a parameter gets weight decay under the default rule.
 * Tensors of rank ≤ 1 (norm weights, biases, diagonals) do not decay. Nor do
 * names that contain "norm" or "bias" (case-insensitive). Nor do BPT and
 * HyperAdapt diagonals, whose last dot-separated name segment is `a` or `b`
 * or ends in `_a` or `_b` (for example `layers.0.mlp.up.bpt_a`). Everything
 * else decays: weight matrices, embeddings and low-rank factors.
 */
export function defaultDecay(name: string, shape: readonly number[]): boolean {
  if (shape.length <= 1) return false;

  const lower = name.toLowerCase();
  if (lower.includes("norm") || lower.includes("bias")) return false;

  const last = name.slice(name.lastIndexOf(".") + 1);
  const isDiagonal = last === "a" || last === "b" || last.endsWith("_a") || last.endsWith("_b");
  return !isDiagonal;
}
