import assert from "node:assert/strict";
import {
  openSafetensors,
  SafetensorsError,
  type TensorEntry,
  writeSafetensors,
} from "./safetensors.ts";

const F32_A = new Uint8Array([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0]); // 1.0, -2.0
const BF16_B = new Uint8Array([0x80, 0x3f, 0x00, 0xbf]); // 1.0, -0.5

const SMALL_ENTRIES: TensorEntry[] = [
  { name: "a", dtype: "F32", shape: [2], bytes: F32_A },
  { name: "b", dtype: "BF16", shape: [1, 2], bytes: BF16_B },
];

// The small file byte by byte: the header JSON is 142 bytes, padded with 2 spaces to 144.
function smallFileBytes(): Uint8Array {
  const json = '{"__metadata__":{"format":"pt"},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}';
  const prefix = [0x90, 0, 0, 0, 0, 0, 0, 0]; // 144, little-endian u64
  return new Uint8Array([
    ...prefix,
    ...new TextEncoder().encode(json),
    0x20,
    0x20,
    ...F32_A,
    ...BF16_B,
  ]);
}

function u64(n: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  return out;
}

// Builds a file from an arbitrary header object and data, for the malformed cases.
function rawFile(header: unknown, data: Uint8Array = new Uint8Array()): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  return new Uint8Array([...u64(json.length), ...json, ...data]);
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function assertOpenFails(path: string, ...parts: string[]): Promise<void> {
  await assert.rejects(openSafetensors(path), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${e}`);
    assert.ok(!e.message.includes("\n"), `message has a newline: ${e.message}`);
    assert.ok(e.message.startsWith(path), `message lacks the path: ${e.message}`);
    for (const part of parts) {
      assert.ok(e.message.includes(part), `"${e.message}" lacks "${part}"`);
    }
    return true;
  });
}

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const chunk of chunks) out.push(chunk);
  return out;
}

Deno.test("writer output matches hand-built bytes", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/small.safetensors`;
    await writeSafetensors(path, SMALL_ENTRIES, { format: "pt" });
    assert.deepEqual(await Deno.readFile(path), smallFileBytes());
  });
});

Deno.test("reader parses hand-built bytes", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/small.safetensors`;
    await Deno.writeFile(path, smallFileBytes());
    const st = await openSafetensors(path);
    try {
      assert.deepEqual(st.metadata, { format: "pt" });
      assert.equal(st.dataOffset, 152);
      assert.deepEqual(st.tensors.get("a"), {
        dtype: "F32",
        shape: [2],
        byteOffset: 152,
        byteLength: 8,
      });
      assert.deepEqual(st.tensors.get("b"), {
        dtype: "BF16",
        shape: [1, 2],
        byteOffset: 160,
        byteLength: 4,
      });
      const a = await st.read("a");
      assert.deepEqual([...new Float32Array(a.buffer)], [1, -2]);
      assert.deepEqual(await st.read("b"), BF16_B);
    } finally {
      st.close();
    }
  });
});

// Writes a file with Python's struct and json modules, in a tensor order different from
// the header's key order, and without padding the header.
const PYTHON_WRITER = `
import json, struct, sys
tensors = [
    ("ints", "I32", [3], struct.pack("<3i", 7, -8, 2147483647)),
    ("f64", "F64", [2, 1], struct.pack("<2d", 3.25, -1e300)),
    ("half", "F16", [2], struct.pack("<2e", 0.5, -65504.0)),
    ("longs", "I64", [1], struct.pack("<q", -(2**40))),
    ("shorts", "I16", [2], struct.pack("<2h", -2, 300)),
    ("bytes", "I8", [2], struct.pack("<2b", -128, 127)),
    ("ubytes", "U8", [1, 3], bytes([0, 128, 255])),
    ("flags", "BOOL", [2], bytes([1, 0])),
    ("empty", "F32", [0, 4], b""),
]
header, offset = {}, 0
for name, dtype, shape, data in tensors:
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
header["__metadata__"] = {"writer": "python struct"}
text = json.dumps(dict(reversed(list(header.items())))).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))
`;

// Reads every tensor of a file with struct and prints the values as JSON.
const PYTHON_READER = `
import json, struct, sys
fmt = {"F32": "f", "F64": "d", "I32": "i", "U8": "B"}
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
out = {"__metadata__": header.pop("__metadata__", None), "header_length": n}
for name, info in header.items():
    begin, end = info["data_offsets"]
    code = fmt[info["dtype"]]
    count = (end - begin) // struct.calcsize(code)
    out[name] = list(struct.unpack("<%d%s" % (count, code), data[begin:end]))
print(json.dumps(out))
`;

async function hasPython(): Promise<boolean> {
  try {
    const { success } = await new Deno.Command("python3", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

async function runPython(script: string, path: string): Promise<string> {
  const { success, stdout, stderr } = await new Deno.Command("python3", {
    args: ["-c", script, path],
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
  return new TextDecoder().decode(stdout);
}

const python = await hasPython();

Deno.test({
  name: "reader parses python-written file",
  ignore: !python,
  fn: () =>
    withTempDir(async (dir) => {
      const path = `${dir}/py.safetensors`;
      await runPython(PYTHON_WRITER, path);
      const st = await openSafetensors(path);
      try {
        assert.deepEqual(st.metadata, { writer: "python struct" });
        assert.equal(st.tensors.size, 9);
        assert.deepEqual(st.tensors.get("f64")?.shape, [2, 1]);
        assert.deepEqual(st.tensors.get("empty")?.byteLength, 0);

        const view = async (name: string) => {
          const b = await st.read(name);
          return new DataView(b.buffer, b.byteOffset, b.byteLength);
        };
        const ints = await view("ints");
        assert.deepEqual([0, 1, 2].map((i) => ints.getInt32(4 * i, true)), [7, -8, 2147483647]);
        const f64 = await view("f64");
        assert.deepEqual([f64.getFloat64(0, true), f64.getFloat64(8, true)], [3.25, -1e300]);
        const half = await view("half");
        // IEEE binary16: 0.5 is 0x3800, -65504 is 0xfbff.
        assert.deepEqual([half.getUint16(0, true), half.getUint16(2, true)], [0x3800, 0xfbff]);
        assert.equal((await view("longs")).getBigInt64(0, true), -(2n ** 40n));
        const shorts = await view("shorts");
        assert.deepEqual([shorts.getInt16(0, true), shorts.getInt16(2, true)], [-2, 300]);
        assert.deepEqual([...new Int8Array((await st.read("bytes")).buffer)], [-128, 127]);
        assert.deepEqual([...(await st.read("ubytes"))], [0, 128, 255]);
        assert.deepEqual([...(await st.read("flags"))], [1, 0]);
        assert.equal((await st.read("empty")).length, 0);
      } finally {
        st.close();
      }
    }),
});

Deno.test({
  name: "python reads writer output",
  ignore: !python,
  fn: () =>
    withTempDir(async (dir) => {
      const path = `${dir}/ours.safetensors`;
      const ints = new Uint8Array(new Int32Array([5, -6, 7]).buffer);
      await writeSafetensors(path, [
        {
          name: "w",
          dtype: "F32",
          shape: [3],
          bytes: new Uint8Array(new Float32Array([0.25, -3, 8]).buffer),
        },
        { name: "i", dtype: "I32", shape: [3], bytes: ints },
        { name: "u", dtype: "U8", shape: [1], bytes: new Uint8Array([9]) },
      ], { step: "12" });
      const out = JSON.parse(await runPython(PYTHON_READER, path));
      assert.deepEqual(out.__metadata__, { step: "12" });
      assert.equal(out.header_length % 8, 0);
      assert.deepEqual(out.w, [0.25, -3, 8]);
      assert.deepEqual(out.i, [5, -6, 7]);
      assert.deepEqual(out.u, [9]);
    }),
});

Deno.test("streamed round trip in chunks", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/stream.safetensors`;
    const big = new Uint8Array(4 * 1000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251;
    // Uneven chunk sizes, so no chunk boundary lines up with an element.
    async function* chunks() {
      for (let i = 0; i < big.length; i += 333) yield big.slice(i, i + 333);
    }
    await writeSafetensors(path, [
      { name: "small", dtype: "I16", shape: [3], bytes: new Uint8Array([1, 0, 2, 0, 3, 0]) },
      { name: "big", dtype: "F32", shape: [10, 100], bytes: chunks },
    ]);

    const st = await openSafetensors(path);
    try {
      assert.deepEqual(st.metadata, {});
      assert.deepEqual(await st.read("big"), big);
      const parts = await collect(st.readChunks("big", 1024));
      assert.deepEqual(parts.map((p) => p.length), [1024, 1024, 1024, 928]);
      const joined = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
      let at = 0;
      for (const p of parts) {
        joined.set(p, at);
        at += p.length;
      }
      assert.deepEqual(joined, big);
      // Concurrent reads must each see their own tensor.
      const [x, y] = await Promise.all([st.read("small"), st.read("big")]);
      assert.deepEqual([...x], [1, 0, 2, 0, 3, 0]);
      assert.deepEqual(y, big);
      assert.equal(st.expectShape("big", [10, 100]).byteLength, 4000);
    } finally {
      st.close();
    }
  });
});

Deno.test("expectShape mismatch and missing tensor", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/small.safetensors`;
    await Deno.writeFile(path, smallFileBytes());
    const st = await openSafetensors(path);
    try {
      assert.throws(
        () => st.expectShape("b", [2, 1]),
        (e: unknown) =>
          e instanceof SafetensorsError &&
          e.message.includes('tensor "b" has shape [1, 2], expected [2, 1]'),
      );
      assert.throws(
        () => st.info("c"),
        (e: unknown) =>
          e instanceof SafetensorsError && e.message.includes('tensor "c" not found') &&
          e.message.includes("(a, b)"),
      );
      await assert.rejects(
        collect(st.readChunks("a", 0)),
        (e: unknown) => e instanceof SafetensorsError && e.message.includes("chunk size 0"),
      );
    } finally {
      st.close();
    }
  });
});

Deno.test("reader rejects malformed files", async () => {
  await withTempDir(async (dir) => {
    const cases: [string, Uint8Array, string[]][] = [
      ["short", new Uint8Array([1, 2, 3]), ["file is 3 bytes"]],
      ["header-past-end", new Uint8Array([...u64(100), ...new TextEncoder().encode("{}")]), [
        "header length 100 runs past the end of the 10-byte file",
      ]],
      ["huge-header", u64(2 ** 40), ["exceeds the 100000000-byte limit"]],
      ["not-json", new Uint8Array([...u64(4), ...new TextEncoder().encode("{abc")]), [
        "header is not valid JSON",
      ]],
      ["not-utf8", new Uint8Array([...u64(2), 0xff, 0xfe]), ["not valid UTF-8"]],
      ["array", rawFile([1, 2]), ["not an object"]],
      [
        "dtype",
        rawFile({ x: { dtype: "F8_E4M3", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
        ['tensor "x" has unknown dtype "F8_E4M3"'],
      ],
      [
        "shape",
        rawFile({ x: { dtype: "U8", shape: [-1], data_offsets: [0, 1] } }, new Uint8Array(1)),
        ['tensor "x" has invalid shape [-1]'],
      ],
      [
        "offsets-form",
        rawFile({ x: { dtype: "U8", shape: [1], data_offsets: [1] } }, new Uint8Array(1)),
        ['tensor "x" has invalid data_offsets [1]'],
      ],
      [
        "size",
        rawFile({ x: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, new Uint8Array(4)),
        ["span 4 bytes, but F32 [2] needs 8"],
      ],
      [
        "bounds",
        rawFile({ x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(6)),
        ["out of bounds of the 6-byte data section"],
      ],
      [
        "overlap",
        rawFile({
          x: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          y: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
        }, new Uint8Array(8)),
        ['tensor "y" data_offsets [4, 8] overlap tensor "x"'],
      ],
      [
        "gap",
        rawFile({ x: { dtype: "U8", shape: [2], data_offsets: [2, 4] } }, new Uint8Array(4)),
        ['unused bytes 0..2 before tensor "x"'],
      ],
      [
        "trailing",
        rawFile({ x: { dtype: "U8", shape: [2], data_offsets: [0, 2] } }, new Uint8Array(3)),
        ["data section is 3 bytes but the tensors end at 2"],
      ],
      ["metadata", rawFile({ __metadata__: { step: 3 } }), ['__metadata__ "step" is 3']],
    ];
    for (const [name, bytes, parts] of cases) {
      const path = `${dir}/${name}.safetensors`;
      await Deno.writeFile(path, bytes);
      await assertOpenFails(path, ...parts);
    }
  });
});

Deno.test("failed write keeps previous file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/ckpt.safetensors`;
    await writeSafetensors(path, SMALL_ENTRIES, { format: "pt" });

    async function* short() {
      yield new Uint8Array(4);
    }
    async function* long() {
      yield new Uint8Array(12);
    }
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(4);
      throw new Error("device lost");
    }
    const bad: [TensorEntry[], string][] = [
      [[{ name: "x", dtype: "F32", shape: [2], bytes: short }], "streamed 4 bytes, expected 8"],
      [[{ name: "x", dtype: "F32", shape: [2], bytes: long }], "streamed more than its 8 bytes"],
      [[{ name: "x", dtype: "F32", shape: [2], bytes: failing }], "device lost"],
    ];
    for (const [entries, part] of bad) {
      await assert.rejects(
        writeSafetensors(path, entries),
        (e: unknown) => e instanceof Error && e.message.includes(part),
      );
    }
    assert.deepEqual(await Deno.readFile(path), smallFileBytes());
    const names = [];
    for await (const entry of Deno.readDir(dir)) names.push(entry.name);
    assert.deepEqual(names, ["ckpt.safetensors"]);
  });
});

Deno.test("writer rejects bad entries", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/bad.safetensors`;
    const bad: [TensorEntry[], string][] = [
      [
        [{ name: "x", dtype: "F32", shape: [3], bytes: new Uint8Array(8) }],
        "has 8 bytes, but F32 [3] needs 12",
      ],
      [
        [{ name: "x", dtype: "Q4" as "F32", shape: [1], bytes: new Uint8Array(4) }],
        'unknown dtype "Q4"',
      ],
      [
        [{ name: "x", dtype: "F32", shape: [1.5], bytes: new Uint8Array(4) }],
        "invalid shape [1.5]",
      ],
      [[
        { name: "x", dtype: "U8", shape: [1], bytes: new Uint8Array(1) },
        { name: "x", dtype: "U8", shape: [1], bytes: new Uint8Array(1) },
      ], 'tensor "x" appears twice'],
      [
        [{ name: "__metadata__", dtype: "U8", shape: [1], bytes: new Uint8Array(1) }],
        "invalid tensor name",
      ],
    ];
    for (const [entries, part] of bad) {
      await assert.rejects(
        writeSafetensors(path, entries),
        (e: unknown) => e instanceof SafetensorsError && e.message.includes(part),
      );
    }
    await assert.rejects(
      writeSafetensors(path, [], { step: 3 as unknown as string }),
      (e: unknown) => e instanceof SafetensorsError && e.message.includes('metadata "step" is 3'),
    );
    const names = [];
    for await (const entry of Deno.readDir(dir)) names.push(entry.name);
    assert.deepEqual(names, []);
  });
});
