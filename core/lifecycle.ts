/**
 * The one lifecycle contract: constructors only assign; start() acquires resources and may be cancelled
 * through the signal; stop() releases them and must be safe to call after a failed or partial start.
 */
export interface Component {
  readonly name: string;
  start(signal: AbortSignal): Promise<void>;
  stop(): Promise<void>;
}

export interface StopFailure {
  component: string;
  error: unknown;
}

/** Starts components in order; on failure or abort stops the ones already started, in reverse. */
export class Lifecycle {
  private readonly started: Component[] = [];

  constructor(private readonly components: Component[], private readonly log: (msg: string, meta?: object) => void) {}

  async start(signal: AbortSignal): Promise<void> {
    for (const c of this.components) {
      signal.throwIfAborted();
      this.log(`starting ${c.name}`);
      try {
        await c.start(signal);
      } catch (err) {
        // a half-started component still gets stop(), so it can release what it acquired
        this.started.push(c);
        throw err;
      }
      this.started.push(c);
    }
  }

  /** Stops in reverse order, each in its own try/catch so one failure cannot leak the rest. */
  async stop(): Promise<StopFailure[]> {
    const failures: StopFailure[] = [];
    while (this.started.length > 0) {
      const c = this.started.pop()!;
      try {
        this.log(`stopping ${c.name}`);
        await c.stop();
      } catch (error) {
        failures.push({ component: c.name, error });
      }
    }
    return failures;
  }
}
