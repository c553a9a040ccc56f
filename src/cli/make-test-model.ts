import { PRESETS, writeGgufTestModel, writeHfTestModel } from "../model/fixtures.js";

interface MakeFlags {
  out: string;
  preset: string;
  format: "hf" | "gguf";
  dtype: string;
  seed: number;
  shardMb?: number;
}

export async function makeTestModelCommand(flags: MakeFlags): Promise<void> {
  const preset = PRESETS[flags.preset];
  if (!preset) throw new Error(`unknown preset '${flags.preset}'; choose one of ${Object.keys(PRESETS).join(", ")}`);
  const spec = { ...preset, seed: flags.seed };
  const dtype = flags.dtype.toUpperCase();
  if (flags.format === "hf") {
    if (!["F32", "F16", "BF16"].includes(dtype)) throw new Error(`hf checkpoints store F32, F16 or BF16, not ${dtype}`);
    await writeHfTestModel(flags.out, spec, {
      dtype: dtype as "F32" | "F16" | "BF16",
      maxShardBytes: flags.shardMb ? flags.shardMb * 1024 * 1024 : undefined,
    });
  } else {
    if (!["F32", "F16", "Q8_0", "Q4_0"].includes(dtype)) throw new Error(`gguf fixtures store F32, F16, Q8_0 or Q4_0, not ${dtype}`);
    await writeGgufTestModel(flags.out, spec, { dtype: dtype as "F32" | "F16" | "Q8_0" | "Q4_0" });
  }
  console.log(`wrote ${flags.preset} (${flags.format}, ${dtype}) to ${flags.out}`);
}
