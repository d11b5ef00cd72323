import { EventEmitter } from 'node:events';
import type { Action, ActionRefusal, IncomingTile, LoopAlert, Rejection, TileOutcome } from './types.js';

/** Everything the daemon's parts tell each other, typed. Listeners must not throw. */
export interface DaemonEvents {
  'tile:received': [tile: IncomingTile];
  'tile:scored': [outcome: TileOutcome];
  'tile:rejected': [rejection: Rejection];
  'action': [action: Action];
  'action:expired': [action: Action];
  /** a safety limit stopped a command that someone should know about (throttled per slide and limit). */
  'action:refused': [refusal: ActionRefusal];
  /** the feedback loop contradicts itself: sign_inverted_detected, loop_diverging (published on the error topic). */
  'loop:alert': [alert: LoopAlert];
  'engine:fallback': [info: { requested: string; chosen: string; reason: string }];
  'status:changed': [];
}

export class TypedEmitter<E extends { [K in keyof E]: unknown[] }> {
  private readonly ee = new EventEmitter();
  constructor() {
    this.ee.setMaxListeners(50);
  }
  on<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): () => void {
    this.ee.on(event, listener as (...a: unknown[]) => void);
    return () => this.ee.off(event, listener as (...a: unknown[]) => void);
  }
  emit<K extends keyof E & string>(event: K, ...args: E[K]): void {
    this.ee.emit(event, ...args);
  }
}

export type DaemonEmitter = TypedEmitter<DaemonEvents>;
