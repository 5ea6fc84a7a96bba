// Reverse-mode autograd on a tape.
//
// Ops call `record()` after their forward dispatch with a closure that turns
// the output's gradient into input gradients. `backward()` walks the tape in
// reverse, sums gradients that meet at a tensor, and accumulates leaf
// gradients into `param.grad` (f32, ledger class "gradients"). Frozen tensors
// (requiresGrad false) get no gradient: ops skip the matching matmul.

import { setDefaultMemoryClass, type Tensor, TensorView, zeros } from "./tensor.ts";
import { addInto, fillInPlace } from "./ops/elementwise.ts";

/** Backward closure: gradient of the output in, one gradient (or null) per input out. */
export type BackwardFn = (dy: Tensor) => (Tensor | null | undefined)[];

interface Node {
  op: string;
  output: Tensor;
  inputs: Tensor[];
  backward: BackwardFn;
}

let enabled = true;
const tape: Node[] = [];
const produced = new WeakSet<Tensor>();

/** Returns whether ops currently record onto the tape. */
export function gradEnabled(): boolean {
  return enabled;
}

/** Runs `fn` without recording. */
export function noGrad<T>(fn: () => T): T {
  const prev = enabled;
  enabled = false;
  try {
    return fn();
  } finally {
    enabled = prev;
  }
}

/** Records an op whose output needs a gradient when any input does. */
export function record(op: string, output: Tensor, inputs: Tensor[], backward: BackwardFn): void {
  if (!enabled || !inputs.some((t) => t.requiresGrad)) return;
  output.requiresGrad = true;
  produced.add(output);
  tape.push({ op, output, inputs, backward });
}

/**
 * Returns, for backward closures, the persistent f32 gradient of `t` when `t`
 * is a leaf that requires a gradient, and null otherwise. The buffer is shaped
 * like `t` and allocated zeroed on first use. A closure that adds into it (a
 * GEMM with beta = 1) returns null for that input, so no pass copies a
 * separate gradient into the buffer afterwards.
 */
export function leafGrad(t: Tensor): Tensor | null {
  const base = baseOf(t);
  if (!t.requiresGrad || produced.has(base)) return null;
  const g = gradBuffer(base);
  return g.shape.join() === t.shape.join() ? g : g.reshape([...t.shape]);
}

function gradBuffer(base: Tensor): Tensor {
  if (!base.grad) {
    base.grad = zeros(base.shape, { memoryClass: "gradients", name: `${base.name}.grad` }).keep();
  }
  return base.grad;
}

/** Number of recorded ops, for tests and benchmarks. */
export function tapeLength(): number {
  return tape.length;
}

/** Drops the tape without computing gradients (evaluation, or an aborted step). */
export function clearTape(): void {
  tape.length = 0;
}

function baseOf(t: Tensor): Tensor {
  return t instanceof TensorView ? baseOf(t.base) : t;
}

/**
 * Computes gradients of `loss` (a scalar, or any tensor with `seed` as its
 * gradient) and accumulates them into the `grad` of every leaf that requires
 * one. Clears the tape.
 */
export function backward(loss: Tensor, seed?: Tensor): void {
  const prevClass = setDefaultMemoryClass("scratch");
  const prevEnabled = enabled;
  // Backward closures call ops too; nothing they do is recorded (no higher-order gradients).
  enabled = false;
  try {
    const grads = new Map<Tensor, Tensor>();
    // Gradient tensors stored under more than one key (an add passes dy to both
    // inputs): they are copied before an in-place accumulation and never freed early.
    const shared = new Set<Tensor>();
    const seedGrad = seed ?? ones(loss.shape);
    grads.set(baseOf(loss), seedGrad);

    for (let k = tape.length - 1; k >= 0; k--) {
      const node = tape[k];
      const out = baseOf(node.output);
      const dy = grads.get(out);
      if (!dy) continue;
      grads.delete(out);
      const dyShaped = dy.shape.join() === node.output.shape.join()
        ? dy
        : dy.reshape([...node.output.shape]);
      const dxs = node.backward(dyShaped);
      const handed = new Set<Tensor>();
      const spent: Tensor[] = [];
      node.inputs.forEach((x, i) => {
        const dx = dxs[i];
        if (!dx || !x.requiresGrad) return;
        const base = baseOf(dx);
        if (base === dy || handed.has(base)) shared.add(base);
        handed.add(base);
        if (accumulate(grads, shared, x, dx)) spent.push(base);
      });

      // Free dy and gradients already added into a leaf's grad, unless another
      // key of `grads` still refers to them.
      const live = new Set([...grads.values()].map(baseOf));
      for (const t of new Set([baseOf(dy), ...spent])) {
        if (t !== seedGrad && !live.has(t) && !shared.has(t)) t.dispose();
      }
    }
  } finally {
    tape.length = 0;
    enabled = prevEnabled;
    setDefaultMemoryClass(prevClass);
  }
}

// Adds dx into x's gradient. Returns true when dx's values were added into
// another buffer (a leaf's grad, or an earlier gradient), so the caller may free it.
function accumulate(
  grads: Map<Tensor, Tensor>,
  shared: Set<Tensor>,
  x: Tensor,
  dx: Tensor,
): boolean {
  const base = baseOf(x);
  const g = dx.numel === base.numel && dx.shape.join() !== base.shape.join()
    ? dx.reshape([...base.shape])
    : dx;

  if (!produced.has(base)) {
    // A leaf: accumulate into its persistent gradient. Ops whose backward
    // writes there itself (see leafGrad) return null and never get here.
    addInto(gradBuffer(base), g);
    return true;
  }
  const prev = grads.get(base);
  if (!prev) {
    grads.set(base, g);
    return false;
  }
  if (shared.has(baseOf(prev)) || baseOf(prev) === baseOf(g)) {
    const sum = zeros(prev.shape);
    addInto(sum, prev);
    addInto(sum, g);
    grads.set(base, sum);
  } else {
    addInto(prev, g);
  }
  return true;
}

function ones(shape: readonly number[]): Tensor {
  const t = zeros(shape);
  fillInPlace(t, 1);
  return t;
}
