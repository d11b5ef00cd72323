/**
 * Watches the event loop while work runs elsewhere, for "does not block the loop" tests that must hold on a loaded
 * machine: a 2 ms interval timer records when it really fires. Assertions compare against the work's own duration
 * (relative), not an absolute latency: work on the loop leaves no tick inside it and a gap as long as itself,
 * work in a worker leaves ticks all through it and gaps of scheduler noise only.
 */
export class LoopProbe {
  private ticks: number[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** [start, end] of each piece of work, in performance.now() ms. */
  readonly spans: Array<[number, number]> = [];

  start(): void {
    this.ticks = [performance.now()];
    this.timer = setInterval(() => this.ticks.push(performance.now()), 2);
  }

  /** Times one piece of work. */
  async time<T>(work: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const r = await work();
    this.spans.push([t0, performance.now()]);
    return r;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.ticks.push(performance.now());
  }

  /** Shortest piece of work (ms). */
  get shortest(): number {
    return Math.min(...this.spans.map(([a, b]) => b - a));
  }

  /** Longest wait between two timer ticks over the whole run (ms): what the worst-served timer saw. */
  get maxGap(): number {
    let g = 0;
    for (let i = 1; i < this.ticks.length; i++) g = Math.max(g, this.ticks[i]! - this.ticks[i - 1]!);
    return g;
  }

  /** Timer ticks that fired inside each piece of work. */
  get ticksPerSpan(): number[] {
    return this.spans.map(([a, b]) => this.ticks.filter((t) => t > a && t < b).length);
  }

  summary(): string {
    const d = this.spans.map(([a, b]) => Math.round(b - a));
    return `work ${d.join('/')} ms, ticks inside ${this.ticksPerSpan.join('/')}, longest timer gap ${this.maxGap.toFixed(1)} ms`;
  }
}
