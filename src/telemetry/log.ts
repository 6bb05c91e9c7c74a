import pino, { type Logger, type LevelWithSilent } from 'pino';

/**
 * Every logger of a family (the root and all children, however deep): pino children keep the
 * level they were created with, so a runtime level change must reach each of them.
 */
const families = new WeakMap<Logger, { members: Set<WeakRef<Logger>>; gone: FinalizationRegistry<WeakRef<Logger>> }>();

/** The root logger: JSON lines on stdout. Access lines go to a child with scope "access". */
export function createLogger(level: LevelWithSilent, base: Record<string, unknown> = {}): Logger {
  const members = new Set<WeakRef<Logger>>();
  const gone = new FinalizationRegistry<WeakRef<Logger>>((ref) => members.delete(ref));
  const track = (l: Logger) => {
    const ref = new WeakRef(l);
    members.add(ref);
    gone.register(l, ref);
  };
  const root = pino({ level, base: { ...base }, timestamp: pino.stdTimeFunctions.isoTime, onChild: track });
  track(root);
  families.set(root, { members, gone });
  return root;
}

/** Sets the level of a root logger and of every child it has or will have. */
export function setLogLevel(root: Logger, level: LevelWithSilent): void {
  const family = families.get(root);
  if (!family) {
    root.level = level;
    return;
  }
  // Children created from now on inherit the root's level.
  for (const ref of family.members) {
    const l = ref.deref();
    if (l) l.level = level;
  }
}

export function accessLogger(root: Logger): Logger {
  return root.child({ scope: 'access' });
}

export type { Logger };
