// Logging through @libp2p/logger, as js-libp2p does: every component logs under `tessera:<area>:<name>`
// and `DEBUG=tessera:*` shows it all (`DEBUG=tessera:*,libp2p:*` with the network's own logs).
// `setLogLevel` is what `tessera node --log-level` calls. Loggers are created on first use, so a
// level set after the modules were imported (the CLI parses its flags after import) still applies,
// trace included.
import { enable, logger as libp2pLogger, type Logger } from "@libp2p/logger";

export type { Logger };

export const LOG_LEVELS = ["silent", "error", "info", "trace"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A logger for `tessera:<name>`: `log(...)` for events, `log.error(...)` for failures, `log.trace(...)` for per-step detail. */
export function logger(name: string): Logger {
  let inner: Logger | undefined;
  const get = () => (inner ??= libp2pLogger(`tessera:${name}`));
  const log = ((formatter: unknown, ...args: unknown[]) => get()(formatter, ...args)) as Logger;
  log.error = (formatter: unknown, ...args: unknown[]) => get().error(formatter, ...args);
  log.trace = (formatter: unknown, ...args: unknown[]) => get().trace(formatter, ...args);
  log.newScope = (scope: string) => logger(`${name}:${scope}`);
  Object.defineProperty(log, "enabled", { get: () => get().enabled });
  return log;
}

/**
 * Turns on Tessera's logs at a level: "error" shows failures only, "info" adds events (announces,
 * sessions, moves), "trace" adds every step. Namespaces already enabled through DEBUG stay on.
 */
export function setLogLevel(level: LogLevel): void {
  const current = process.env.DEBUG ? [process.env.DEBUG] : [];
  const wanted = { silent: [], error: ["tessera:*:error"], info: ["tessera:*", "-tessera:*:trace"], trace: ["tessera:*"] }[level];
  enable([...current, ...wanted].join(","));
}

/** The message of anything thrown, for log lines and error replies. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
