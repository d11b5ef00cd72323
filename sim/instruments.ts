/**
 * Instruments of the virtual scanner: the same optics model (imaging/optics.ts) with the two asymmetries the
 * model reads the sign of defocus from, spherical aberration and axial colour, either as in training or reversed.
 * Which way they point is a property of the instrument (objective, cover glass, mounting medium), so a daemon
 * meets all of these in the field.
 */
import { DEFAULT_OPTICS, DefocusOptics, type OpticsParams } from '../imaging/optics.js';

export const INSTRUMENTS = ['matching', 'mirrored', 'sa-reversed', 'colour-reversed', 'none'] as const;
export type InstrumentName = (typeof INSTRUMENTS)[number];

export interface Instrument {
  name: InstrumentName;
  description: string;
  optics: OpticsParams;
}

const neg = (v: [number, number, number]): [number, number, number] => [-v[0], -v[1], -v[2]];

/** The optics parameters of each instrument variant. */
export function instrument(name: InstrumentName): Instrument {
  const base = DEFAULT_OPTICS;
  switch (name) {
    case 'matching':
      return { name, description: 'aberrations as in the training optics', optics: { ...base } };
    case 'mirrored':
      // both signs reversed: its +z looks exactly like the training optics' −z (a "−z world")
      return {
        name,
        description: 'spherical aberration and axial colour both reversed (renders +z as the training optics render −z)',
        optics: { ...base, sphericalWaves: -base.sphericalWaves, chromaticShiftUm: neg(base.chromaticShiftUm) },
      };
    case 'sa-reversed':
      return { name, description: 'spherical aberration reversed, axial colour as in training', optics: { ...base, sphericalWaves: -base.sphericalWaves } };
    case 'colour-reversed':
      return { name, description: 'axial colour reversed, spherical aberration as in training', optics: { ...base, chromaticShiftUm: neg(base.chromaticShiftUm) } };
    case 'none':
      return { name, description: 'no spherical aberration, no axial colour: the sign of defocus cannot be read', optics: { ...base, sphericalWaves: 0, chromaticShiftUm: [0, 0, 0] } };
  }
}

export function isInstrument(s: string): s is InstrumentName {
  return (INSTRUMENTS as readonly string[]).includes(s);
}

/** A DefocusOptics for the instrument (it caches blur kernels: keep one per instrument). */
export function instrumentOptics(name: InstrumentName): DefocusOptics {
  return new DefocusOptics(instrument(name).optics);
}
