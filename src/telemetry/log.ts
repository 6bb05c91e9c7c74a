import pino, { type Logger, type LevelWithSilent } from 'pino';

/** The root logger: JSON lines on stdout. Access lines go to a child with scope "access". */
export function createLogger(level: LevelWithSilent, base: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { ...base }, timestamp: pino.stdTimeFunctions.isoTime });
}

export function accessLogger(root: Logger): Logger {
  return root.child({ scope: 'access' });
}

export type { Logger };
