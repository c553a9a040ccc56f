// The small trained model that ships with Tessera (see models/README.md and tools/train/).
import { fileURLToPath } from "node:url";

const modelsDir = fileURLToPath(new URL("../../models/", import.meta.url));

export const SHIPPED_MODEL = {
  /** Hugging Face folder (f16 safetensors). */
  hf: `${modelsDir}tessera-kjv`,
  /** Its GGUF conversion. */
  gguf: `${modelsDir}tessera-kjv.gguf`,
  /** Held-out evaluation text. */
  evalText: `${modelsDir}tessera-kjv/eval.txt`,
} as const;
