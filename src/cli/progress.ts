import cliProgress from "cli-progress";

export type ProgressCallback = (done: number, total: number) => void;

/** Runs work that reports progress, showing a bar on stderr when `show` and stderr is a terminal. */
export async function withProgress<T>(label: string, show: boolean, work: (onProgress: ProgressCallback) => Promise<T>): Promise<T> {
  if (!show || !process.stderr.isTTY) return work(() => {});
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% | {value}/{total}`, stream: process.stderr, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  try {
    return await work((done, total) => {
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.update(done);
    });
  } finally {
    if (started) bar.stop();
  }
}
