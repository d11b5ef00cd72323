/**
 * Repeating problems (a broker outage failing every publish, a safety limit refusing every tile) are logged once per
 * key and interval, with the number of repeats left out; counters elsewhere keep every one. Keeps journald readable
 * at 30 tiles/s without hiding that something keeps happening.
 */
export class LogThrottle {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly intervalMs: number) {}

  /** null: stay quiet this time; otherwise log now, mentioning `suppressed` repeats since the last line. */
  take(key: string, now = Date.now()): { suppressed: number } | null {
    const f = this.last.get(key);
    if (f && now - f.at < this.intervalMs) {
      f.suppressed++;
      return null;
    }
    this.last.set(key, { at: now, suppressed: 0 });
    return { suppressed: f?.suppressed ?? 0 };
  }
}
