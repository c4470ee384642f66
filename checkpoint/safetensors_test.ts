import { deepEqual, equal, rejects, throws } from "@std/assert";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  SafetensorsError,
  tensorToFloat32,
  writeSafetensors,
} from "./safetensors.ts";

function sample(): Uint8Array {
  return encodeSafetensors({
    a: { dtype: "F32", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
    b: { dtype: "F32", shape: [1], data: new Float32Array([-0.5]) },
  }, { config: "{}", note: "x" });
}

Deno.test("safetensors round trip keeps tensors, order and metadata", () => {
  const bytes = sample();
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  equal((8 + n) % 8, 0);
  const f = decodeSafetensors(bytes);
  deepEqual([...f.tensors.keys()], ["a", "b"]);
  deepEqual(f.tensors.get("a")?.shape, [2, 3]);
  deepEqual(tensorToFloat32(f.tensors.get("a")!), new Float32Array([1, 2, 3, 4, 5, 6]));
  deepEqual(f.metadata, { config: "{}", note: "x" });
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  deepEqual(header.b, { dtype: "F32", shape: [1], data_offsets: [24, 28] });
});

Deno.test("decodeSafetensors rejects truncated and corrupt files with a clear error", () => {
  const bytes = sample();
  throws(() => decodeSafetensors(bytes.subarray(0, 5)), /shorter than the 8-byte header length/);
  throws(() => decodeSafetensors(bytes.subarray(0, 40)), /truncated: header needs/);
  throws(
    () => decodeSafetensors(bytes.subarray(0, bytes.length - 4)),
    /truncated: tensor b ends at byte 28/,
  );
  const extra = new Uint8Array(bytes.length + 4);
  extra.set(bytes);
  throws(() => decodeSafetensors(extra), /4 trailing bytes/);
  const garbled = bytes.slice();
  garbled[9] = 0x7b; // '{' where a '"' was: invalid JSON
  garbled[10] = 0x7b;
  throws(() => decodeSafetensors(garbled), SafetensorsError);
  throws(() => decodeSafetensors(garbled), /header is not valid JSON/);
  const huge = bytes.slice();
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  throws(() => decodeSafetensors(huge), /header length .* exceeds/);
  const mk = (header: unknown, dataLen: number) => {
    const h = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + h.length + dataLen);
    new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
    out.set(h, 8);
    return out;
  };
  throws(
    () => decodeSafetensors(mk({ x: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, 4)),
    /needs 8/,
  );
  throws(
    () => decodeSafetensors(mk({ x: { dtype: "Q4", shape: [1], data_offsets: [0, 4] } }, 4)),
    /unknown dtype/,
  );
  throws(
    () => decodeSafetensors(mk({ x: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4)),
    /invalid shape/,
  );
  throws(
    () =>
      decodeSafetensors(mk({
        x: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
        y: { dtype: "F32", shape: [1], data_offsets: [2, 6] },
      }, 6)),
    /overlaps/,
  );
  throws(
    () => decodeSafetensors(mk({ __metadata__: { a: 1 } }, 0)),
    /__metadata__.a is not a string/,
  );
  throws(() => decodeSafetensors(mk([1, 2], 0)), /not a JSON object/);
});

Deno.test("readSafetensors names a missing file; writeSafetensors writes atomically", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await rejects(
      () => readSafetensors(`${dir}/none.safetensors`),
      SafetensorsError,
      "does not exist",
    );
    const path = `${dir}/t.safetensors`;
    await writeSafetensors(path, {
      w: { dtype: "F32", shape: [2], data: new Float32Array([3, 4]) },
    });
    const f = await readSafetensors(path);
    deepEqual(tensorToFloat32(f.tensors.get("w")!), new Float32Array([3, 4]));
    deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["t.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
