// Activations: SiLU, and SwiGLU as one fused op, silu(gate) · up, the MLP
// nonlinearity of Qwen2 and OLMo-2.
//
// silu(x) = x · σ(x),  silu'(x) = σ(x) · (1 + x · (1 − σ(x))).
// Inputs may be any dtype, outputs and gradients are f32. Tensors larger than
// one binding are processed in windows of at most `windowElements("f32")`.

import { record } from "../autograd.ts";
import { empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import { flatIndex, grid1d, main1d, storage, uniforms, window, windowElements } from "../wgsl.ts";

// σ(x) from exp(−|x|), which never overflows.
const SIGMOID = `
fn sigmoid(x: f32) -> f32 {
  let e = exp(-abs(x));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}`;

// A tensor bound to an element-wise kernel under `name`; outputs are f32.
interface Operand {
  t: Tensor;
  name: string;
  write?: boolean;
}

// Runs `body` once per element over windows of every tensor in `tensors`
// (all of `n` elements). Binding k + 1 is tensors[k]; the body reads them
// through ld_<name> at index p.o<k> + i and writes outputs the same way.
function elementwise(label: string, n: number, tensors: Operand[], body: string) {
  const offsets = tensors.map((_, k) => `o${k}: u32`).join(", ");
  const decls = tensors.map(({ t, name, write }, k) =>
    write
      ? `@group(0) @binding(${k + 1}) var<storage, read_write> ${name}: array<f32>;`
      : storage(k + 1, name, t.dtype)
  ).join("\n");
  const code = `
struct P { n: u32, ${offsets} }
@group(0) @binding(0) var<uniform> p: P;
${decls}
${SIGMOID}
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  ${body}
}`;
  const step = windowElements("f32");
  for (let start = 0; start < n; start += step) {
    const count = Math.min(step, n - start);
    const windows = tensors.map(({ t }) => window(t, start, count));
    gpu().dispatch({
      label,
      code,
      buffers: windows.map((w) => w.binding),
      uniforms: uniforms(count, ...windows.map((w) => w.offset)),
      workgroups: grid1d(count),
    });
  }
}

/** SiLU (swish): x · σ(x), element-wise. */
export function silu(x: Tensor): Tensor {
  const out = empty(x.shape);
  elementwise(
    `silu(${x.shapeString})`,
    x.numel,
    [{ t: x, name: "X" }, { t: out, name: "Y", write: true }],
    `let x = ld_X(p.o0 + i);
  Y[p.o1 + i] = x * sigmoid(x);`,
  );

  record("silu", out, [x], (dy) => {
    const dx = empty(x.shape);
    elementwise(
      `silu_backward(${x.shapeString})`,
      x.numel,
      [{ t: x, name: "X" }, { t: dy, name: "DY" }, { t: dx, name: "DX", write: true }],
      `let x = ld_X(p.o0 + i);
  let s = sigmoid(x);
  DX[p.o2 + i] = ld_DY(p.o1 + i) * s * (1.0 + x * (1.0 - s));`,
    );
    return [dx];
  });
  return out;
}

/** SwiGLU: silu(gate) · up, element-wise, for gate and up of the same shape. */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  if (gate.shape.join() !== up.shape.join()) {
    throw new ShapeError(
      `swiglu: gate ${gate.shapeString} and up ${up.shapeString} must have the same shape`,
    );
  }
  const out = empty(gate.shape);
  elementwise(
    `swiglu(${gate.shapeString})`,
    gate.numel,
    [{ t: gate, name: "G" }, { t: up, name: "U" }, { t: out, name: "Y", write: true }],
    `let g = ld_G(p.o0 + i);
  Y[p.o2 + i] = g * sigmoid(g) * ld_U(p.o1 + i);`,
  );

  record("swiglu", out, [gate, up], (dy) => {
    const dgate = gate.requiresGrad ? empty(gate.shape) : null;
    const dup = up.requiresGrad ? empty(up.shape) : null;
    const tensors: Operand[] = [{ t: gate, name: "G" }, { t: up, name: "U" }, {
      t: dy,
      name: "DY",
    }];
    const writes: string[] = [];
    if (dgate) {
      writes.push(`DG[p.o${tensors.length} + i] = d * u * s * (1.0 + g * (1.0 - s));`);
      tensors.push({ t: dgate, name: "DG", write: true });
    }
    if (dup) {
      writes.push(`DU[p.o${tensors.length} + i] = d * g * s;`);
      tensors.push({ t: dup, name: "DU", write: true });
    }
    elementwise(
      `swiglu_backward(${gate.shapeString})`,
      gate.numel,
      tensors,
      `let g = ld_G(p.o0 + i);
  let u = ld_U(p.o1 + i);
  let d = ld_DY(p.o2 + i);
  let s = sigmoid(g);
  ${writes.join("\n  ")}`,
    );
    return [dgate, dup];
  });
  return out;
}
