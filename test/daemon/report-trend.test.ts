import { describe, expect, it } from 'vitest';
import { Store } from '../../adapters/store.js';
import { buildTrend, detectChanges, type ChangeOptions, type NightFigures } from '../../daemon/report-trend.js';
import { generateHistory } from '../../sim/history.js';
import { makeCtx, tempDir } from '../helpers/mqtt-side.js';

const END = Date.parse('2026-11-30T02:00:00Z');
const DAY = 86_400_000;

/** A simulated history in a real SQLite store and the trend of its last 30 nights, with the configured detector. */
async function trendOf(changeAfterNight: number | null, seed: number) {
  const ctx = makeCtx({ 'store.dir': tempDir('focusd-trend-'), 'scanner.id': 'axioscan-01' });
  const store = new Store(ctx);
  await store.start(new AbortController().signal);
  try {
    const sim = generateHistory(store, { scanner: 'axioscan-01', end: END, nights: 30, slidesPerNight: 5, changeAfterNight, seed });
    const { trendNights, windowHours, change } = ctx.config.reports;
    return { sim, trend: buildTrend(store, END, 'axioscan-01', { trendNights, windowHours, change }) };
  } finally {
    await store.stop();
  }
}

const dayIndex = (date: string) => 29 - Math.round((Date.parse(`${date}T02:00:00Z`) - END) / -DAY);

describe('change detector on the nightly figures', () => {
  it('finds drift rising after night 20 within 2 nights, and says by how much since when', async () => {
    const { sim, trend } = await trendOf(20, 12);
    expect(trend.nights.length).toBe(30);
    expect(trend.nights.every((n) => n.slides === 5)).toBe(true);
    const changeNight = sim.changeNight!;
    expect(changeNight).toBe(21);
    const corr = trend.alerts.find((a) => a.metric === 'corrections_per_slide');
    expect(corr, JSON.stringify(trend.alerts)).toBeDefined();
    expect(corr!.direction).toBe('up');
    expect(dayIndex(corr!.detected) - changeNight).toBeLessThanOrEqual(2);
    expect(dayIndex(corr!.detected)).toBeGreaterThanOrEqual(changeNight);
    expect(Math.abs(dayIndex(corr!.since) - changeNight)).toBeLessThanOrEqual(1);
    expect(corr!.ratio!).toBeGreaterThan(3);
    expect(corr!.message).toMatch(new RegExp(`^drift correction per slide up \\d+(\\.\\d)?× since ${corr!.since} `));
    // nothing is flagged as having changed before the planted change
    for (const a of trend.alerts) expect(dayIndex(a.since), a.message).toBeGreaterThanOrEqual(changeNight - 1);
  }, 60_000);

  it('raises no alert on 30 quiet nights (three different histories)', async () => {
    for (const seed of [12, 7, 2026]) {
      const { trend } = await trendOf(null, seed);
      expect(trend.nights.length).toBe(30);
      expect(trend.alerts, `seed ${seed}`).toEqual([]);
    }
  }, 120_000);

  it('CUSUM: a step of 3 σ is found on its second night at the latest; too short a history or too small a change is not reported', () => {
    const o: ChangeOptions = { baselineNights: 10, k: 1, h: 5, minRatio: 1.5, minSigmaFraction: 0.1 };
    const night = (i: number, v: number): NightFigures => ({
      date: new Date(Date.UTC(2026, 10, 1 + i)).toISOString().slice(0, 10),
      from: '',
      to: '',
      slides: 5,
      tiles: 1000,
      out_of_focus_rate: 0.01,
      mean_abs_defocus_um: 0.3,
      drift_um_per_h: 0.5,
      corrections_per_slide: v,
    });
    const wobble = [1, 1.2, 0.8, 1.1, 0.9, 1, 1.3, 0.7, 1, 1];
    const series = (after: number) => Array.from({ length: 20 }, (_, i) => night(i, i < 15 ? wobble[i % 10]! : after));
    const up = detectChanges(series(3), o);
    expect(up.map((a) => [a.metric, a.direction, a.since, a.detected])).toEqual([['corrections_per_slide', 'up', '2026-11-16', '2026-11-16']]);
    expect(up[0]!.message).toBe('drift correction per slide up 3.0× since 2026-11-16 (1 → 3)');
    const down = detectChanges(series(0.2), o);
    // −4.5 σ a night: S⁻ = 3.5 after the first night, 7 after the second
    expect(down.map((a) => [a.direction, a.since, a.detected])).toEqual([['down', '2026-11-16', '2026-11-17']]);
    expect(down[0]!.message).toBe('drift correction per slide down to 0.20× since 2026-11-16 (1 → 0.2)');
    // a statistically clear but small step (×1.3) stays below minRatio
    expect(detectChanges(series(1.3 + 0.5), { ...o, minRatio: 2 })).toEqual([]);
    // a baseline shorter than baselineNights: nothing to compare against
    expect(detectChanges(series(3).slice(0, 10), o)).toEqual([]);
  });
});
