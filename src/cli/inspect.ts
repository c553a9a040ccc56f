import { openCheckpoint } from "../model/checkpoint.js";
import { expectedShapes } from "../model/config.js";

export async function inspectCommand(flags: { model: string }): Promise<void> {
  const checkpoint = await openCheckpoint(flags.model);
  console.log(`${checkpoint.format} checkpoint ${checkpoint.path}`);
  console.log(JSON.stringify(checkpoint.config, null, 2));
  let params = 0;
  const dtypes = new Map<string, number>();
  for (const name of expectedShapes(checkpoint.config).keys()) {
    const info = checkpoint.info(name);
    const n = info.shape.reduce((a, b) => a * b, 1);
    params += n;
    dtypes.set(info.dtype, (dtypes.get(info.dtype) ?? 0) + n);
  }
  console.log(`${(params / 1e6).toFixed(2)}M parameters; by type: ${[...dtypes].map(([d, n]) => `${d} ${(n / 1e6).toFixed(2)}M`).join(", ")}`);
}
