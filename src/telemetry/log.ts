import pino, { type Logger, type LevelWithSilent } from 'pino';

/**
 * Every logger of a family (the root and all children, however deep): pino children keep the
 * level they were created with, so a runtime level change must reach each of them.
 */
const families = new WeakMap<Logger, { members: Set<WeakRef<Logger>>; gone: FinalizationRegistry<WeakRef<Logger>> }>();

// Log lines are batched: written once 4 KB have gathered, else at the next 100 ms tick, and flushed
// synchronously when the process exits. A write per line was a visible share of each agent's CPU
// per new connection, one access line each (bench/README.md, "Measurements behind the code"). A
// SIGKILL loses at most the last 100 ms of lines.
const LOG_BATCH_BYTES = 4096;
export const LOG_FLUSH_MS = 100;

/** The root logger: JSON lines on stdout. Access lines go to a child with scope "access". */
export function createLogger(level: LevelWithSilent, base: Record<string, unknown> = {}): Logger {
  const members = new Set<WeakRef<Logger>>();
  const gone = new FinalizationRegistry<WeakRef<Logger>>((ref) => members.delete(ref));
  const track = (l: Logger) => {
    const ref = new WeakRef(l);
    members.add(ref);
    gone.register(l, ref);
  };
  const destination = pino.destination({ dest: 1, sync: false, minLength: LOG_BATCH_BYTES, periodicFlush: LOG_FLUSH_MS });
  const root = pino({ level, base: { ...base }, timestamp: pino.stdTimeFunctions.isoTime, onChild: track }, destination);
  track(root);
  families.set(root, { members, gone });
  return root;
}

/** Loggers whose level no runtime change touches (the access and admin records), and that level. */
const PINNED_LEVEL = 'info';
const pinned = new WeakSet<Logger>();

/**
 * Sets the level of a root logger and of every child it has or will have, except the pinned ones
 * (accessLogger, adminLogger): turning the agent quiet must not turn off its records.
 */
export function setLogLevel(root: Logger, level: LevelWithSilent): void {
  const family = families.get(root);
  if (!family) {
    root.level = level;
    return;
  }
  // Children created from now on inherit the root's level. pino hands a level set on a logger down
  // to its children, the pinned ones too: they are set back after.
  const keep: Logger[] = [];
  for (const ref of family.members) {
    const l = ref.deref();
    if (!l) continue;
    if (pinned.has(l)) keep.push(l);
    else l.level = level;
  }
  for (const l of keep) l.level = PINNED_LEVEL;
}

/** A child that always logs at `info` and up, whatever the family's level now or later (its own children are not pinned). */
function pinnedChild(root: Logger, bindings: Record<string, unknown>): Logger {
  const l = root.child(bindings, { level: PINNED_LEVEL });
  pinned.add(l);
  return l;
}

/**
 * One line per connection (scope "access"). It is the record of who talked to whom: it stays on
 * whatever the log level (`--log-level`, or `POST /logging?level=silent` from any host process);
 * only `--access-log off` turns it off.
 */
export function accessLogger(root: Logger): Logger {
  return pinnedChild(root, { scope: 'access' });
}

/** Changes made through the admin API (scope "admin"), logged before they apply, whatever the level. */
export function adminLogger(root: Logger, bindings: Record<string, unknown> = {}): Logger {
  return pinnedChild(root, { scope: 'admin', ...bindings });
}

export type { Logger };
