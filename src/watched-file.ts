// A text file that is read, validated and re-read when it changes, keeping the last good value:
// the workloads file and the CA's tokens file both work this way. Polling (fs.watchFile) survives
// editors and ConfigMap mounts that replace the file instead of writing it.
import { unwatchFile, watchFile } from 'node:fs';
import { readFile } from 'node:fs/promises';

export interface WatchedFileOptions<T> {
  path: string;
  intervalMs: number;
  /** Validates the text; throws for a file that must not take effect. */
  parse(text: string): T;
  onValue(value: T): void;
  /** A later read or parse failed; the previous value stays in force. */
  onError(err: Error): void;
  /** Turns a failure to read the file into the error reported (default: the fs error). */
  readError?(err: Error): Error;
}

export interface WatchedFile {
  /** Reads and parses once; a missing or invalid file at start throws (nothing good to keep). */
  start(): Promise<void>;
  close(): void;
}

export function watchTextFile<T>(opts: WatchedFileOptions<T>): WatchedFile {
  let lastText: string | undefined;
  let listener: (() => void) | undefined;
  const load = async (initial: boolean): Promise<void> => {
    try {
      let text: string;
      try {
        text = await readFile(opts.path, 'utf8');
      } catch (err) {
        throw opts.readError ? opts.readError(err as Error) : err;
      }
      if (text === lastText) return;
      // Remembered before parsing: a bad file is reported once, not on every poll.
      lastText = text;
      opts.onValue(opts.parse(text));
    } catch (err) {
      if (initial) throw err;
      opts.onError(err as Error);
    }
  };
  return {
    async start() {
      await load(true);
      listener = () => { void load(false); };
      watchFile(opts.path, { interval: opts.intervalMs, persistent: false }, listener);
    },
    close() {
      if (listener) unwatchFile(opts.path, listener);
      listener = undefined;
    },
  };
}
