import { describe, expect, it } from 'vitest';
import { Store } from '../../adapters/store.js';
import { makeCtx, tempDir } from '../helpers/mqtt-side.js';

describe('store: refused actions for the reports', () => {
  it('records every action:refused event, suppressed repeats included, per slide and limit', async () => {
    const ctx = makeCtx({ 'store.dir': tempDir('focusd-refusals-') });
    const store = new Store(ctx);
    await store.start(new AbortController().signal);
    const t0 = Date.now();
    const refusal = { type: 'reacquire' as const, detail: 'x', scanner: 'scanner-a', slide: 'S1', tile: 3, seq: 9 };
    ctx.events.emit('action:refused', { ...refusal, limit: 'max_reacquire_per_tile', suppressed: 0 });
    ctx.events.emit('action:refused', { ...refusal, limit: 'max_reacquire_per_tile', suppressed: 4 });
    ctx.events.emit('action:refused', { ...refusal, type: 'z_offset', limit: 'max_cumulative_um', suppressed: 0 });
    ctx.events.emit('action:refused', { ...refusal, scanner: 'scanner-b', limit: 'max_cumulative_um', suppressed: 0 });
    expect(store.reportRefusals(t0 - 1, Date.now() + 1, 'scanner-a')).toEqual([
      { slide: 'S1', limit: 'max_cumulative_um', n: 1 },
      { slide: 'S1', limit: 'max_reacquire_per_tile', n: 6 },
    ]);
    expect(store.reportRefusals(Date.now() + 1, Date.now() + 2, 'scanner-a')).toEqual([]);
    await store.stop();
    // stopped: events are no longer recorded (and do not throw)
    ctx.events.emit('action:refused', { ...refusal, limit: 'max_reacquire_per_tile', suppressed: 0 });
  });
});
