/**
 * The fixed 8-bit patches [n,3,320,320] whose PyTorch outputs test/fixtures/make_fixtures.py commits
 * (reference_input there): an integer hash of the element index, brightness and contrast varied per patch.
 */
export function referenceInputU8(n: number, size = 320): Uint8Array {
  const out = new Uint8Array(n * 3 * size * size);
  const per = 3 * size * size;
  for (let i = 0; i < out.length; i++) {
    let v = (Math.imul(i, 2654435761) + 12345) >>> 0;
    v = (v ^ (v >>> 15)) >>> 0;
    v = Math.imul(v, 2246822519) >>> 0;
    v = (v ^ (v >>> 13)) >>> 0;
    const raw = v & 255;
    const k = Math.floor(i / per);
    // numpy rounds half to even; (raw − 128)·(k+1)/n lands on .5 only for even n·… — match it exactly
    const x = 40 + 20 * k + ((raw - 128) * (k + 1)) / n + 128;
    out[i] = Math.min(255, Math.max(0, roundHalfEven(x)));
  }
  return out;
}

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
