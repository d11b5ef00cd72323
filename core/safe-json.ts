/**
 * JSON.stringify for values that carry something received from outside (a tile header echoed in a reply, an error
 * message, a log line). JSON.stringify throws on cycles, BigInt and nesting deep enough to overflow the stack; the
 * ingest refuses deep headers (protocol/header.ts MAX_JSON_DEPTH), and this is the guard for whatever slips past it,
 * so a reply or message is still sent: `fallback` gives the value to send instead (it must serialise).
 */
export function safeStringify(value: unknown, fallback: (err: Error) => unknown): string {
  try {
    return JSON.stringify(value);
  } catch (err) {
    return JSON.stringify(fallback(err as Error));
  }
}
