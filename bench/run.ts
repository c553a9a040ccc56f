// Benchmark dispatcher: `tsx bench/run.ts <name> [flags]` runs the exported main(args) of bench/<name>.ts.
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** Benchmarks are the bench/*.ts files other than this one and helpers (*-worker.ts, _*.ts). */
function available(): string[] {
  return readdirSync(here)
    .filter((f) => f.endsWith(".ts") && f !== "run.ts" && !f.endsWith("-worker.ts") && !f.startsWith("_") && !f.endsWith(".d.ts"))
    .map((f) => f.slice(0, -3))
    .sort();
}

async function run(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  const names = available();
  if (!name || !names.includes(name) || !existsSync(join(here, `${name}.ts`))) {
    if (name) console.error(`unknown benchmark '${name}'`);
    console.error(`usage: npm run bench -- <name> [flags]\navailable benchmarks: ${names.join(", ") || "(none)"}`);
    return 1;
  }
  const mod = (await import(pathToFileURL(join(here, `${name}.ts`)).href)) as { main?: (args: string[]) => unknown };
  if (typeof mod.main !== "function") {
    console.error(`bench/${name}.ts exports no main(args)`);
    return 1;
  }
  await mod.main(args);
  return 0;
}

process.exitCode = await run(process.argv.slice(2));
