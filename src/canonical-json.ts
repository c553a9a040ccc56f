// The one canonical JSON of the project: what signatures and content hashes are computed over
// (node records, model manifests).

/**
 * JSON with object keys sorted (by UTF-16 code units, as JSON.stringify compares strings) and no
 * whitespace; numbers, strings and undefined/function members as JSON.stringify writes them. For
 * the values a record holds this is RFC 8785 (JCS) output.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v)).join(",")}]`;
  const members: string[] = [];
  for (const k of Object.keys(value).sort()) {
    const v = (value as { [key: string]: unknown })[k];
    if (v === undefined || typeof v === "function" || typeof v === "symbol") continue;
    members.push(`${JSON.stringify(k)}:${canonicalJson(v)}`);
  }
  return `{${members.join(",")}}`;
}
