// Who may obtain which identity. The CA asks two questions of every request: which node holds this
// token (authenticate), and does that node run a pod with the requested identity (authorize). A
// compromised node can then obtain only the identities of the pods scheduled on it.
//
// Two implementations: Kubernetes (TokenReview + pods on the node, kubernetes.ts) and local (this
// file: a tokens file naming each node's token, and the workloads file for pod placement).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import { parse } from 'yaml';
import { AuthorizerUnavailableError, ConfigError, IdentityNotAllowedError, TokenRejectedError } from '../errors.ts';
import type { MeshSnapshot } from '../workloads/model.ts';
import { createFileSource } from '../workloads/file.ts';
import type { WorkloadSource } from '../workloads/source.ts';
import { watchTextFile } from '../watched-file.ts';

export interface NodeIdentity {
  node: string;
  /** Who the token belongs to, for the CA's log (a ServiceAccount, or "token:<node>"). */
  subject: string;
}

export interface NodeAuthorizer {
  readonly name: string;
  start(): Promise<void>;
  /** Throws TokenRejectedError for a bad token, AuthorizerUnavailableError when it cannot tell now. */
  authenticate(token: string): Promise<NodeIdentity>;
  /** Throws IdentityNotAllowedError unless a pod on `who.node` runs as `spiffeId`. */
  authorize(who: NodeIdentity, spiffeId: string): Promise<void>;
  /** Whether it can answer (placement loaded, API reachable at least once). */
  ready(): boolean;
  close(): Promise<void>;
}

const MIN_TOKEN_LENGTH = 16;

/** Parses the local tokens file; every problem is listed. */
export function parseTokensFile(text: string, where: string): Map<string, Buffer> {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (err) {
    throw new ConfigError([`${where}: not valid YAML: ${(err as Error).message.split('\n')[0]}`]);
  }
  const problems: string[] = [];
  const list = (doc as { tokens?: unknown } | null)?.tokens;
  if (!Array.isArray(list)) throw new ConfigError([`${where}: expected a mapping with a "tokens" list of { node, token }`]);
  const byNode = new Map<string, Buffer>();
  const seen = new Set<string>();
  for (const [i, entry] of list.entries()) {
    const node = (entry as { node?: unknown })?.node;
    const token = (entry as { token?: unknown })?.token;
    if (typeof node !== 'string' || node === '') problems.push(`${where}: tokens[${i}].node: required string`);
    if (typeof token !== 'string' || token.length < MIN_TOKEN_LENGTH) problems.push(`${where}: tokens[${i}].token: required, at least ${MIN_TOKEN_LENGTH} characters`);
    if (typeof node !== 'string' || typeof token !== 'string') continue;
    if (byNode.has(node)) problems.push(`${where}: tokens[${i}]: node ${node} listed twice`);
    if (seen.has(token)) problems.push(`${where}: tokens[${i}]: the same token is given to two nodes`);
    seen.add(token);
    byNode.set(node, digest(token));
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return byNode;
}

/** Tokens are compared as SHA-256 digests in constant time: equal length, no early exit. */
function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

export interface LocalAuthorizerOptions {
  tokensFile: string;
  workloadsFile: string;
  log: Logger;
  pollIntervalMs?: number;
  /** For tests: a workload source other than the file. */
  source?: WorkloadSource;
}

/** Local mode: a tokens file (node -> token) and the workloads file (which pod runs where). */
export function createLocalAuthorizer(opts: LocalAuthorizerOptions): NodeAuthorizer {
  const log = opts.log.child({ component: 'authorizer' });
  const source = opts.source ?? createFileSource({ path: opts.workloadsFile, pollIntervalMs: opts.pollIntervalMs });
  let tokens = new Map<string, Buffer>();
  let snapshot: MeshSnapshot | undefined;
  const tokensFile = watchTextFile({
    path: opts.tokensFile,
    intervalMs: opts.pollIntervalMs ?? 500,
    parse: (text) => parseTokensFile(text, opts.tokensFile),
    onValue: (t) => {
      if (tokens.size > 0) log.info({ nodes: t.size }, 'tokens file reloaded');
      tokens = t;
    },
    onError: (err) => log.error({ err: err.message }, 'tokens file rejected; the previous tokens stay in force'),
    readError: (err) => new ConfigError([`--tokens: cannot read ${opts.tokensFile}: ${err.message}`]),
  });

  return {
    name: 'local',
    async start() {
      await tokensFile.start();
      await source.start({
        onSnapshot: (s) => { snapshot = s; },
        onError: (err) => log.error({ err: err.message }, 'workloads file rejected; the last good placement stays in force'),
      });
    },
    async authenticate(token) {
      if (!token) throw new TokenRejectedError('no bearer token');
      const presented = digest(token);
      for (const [node, expected] of tokens) {
        if (timingSafeEqual(presented, expected)) return { node, subject: `token:${node}` };
      }
      throw new TokenRejectedError('unknown token');
    },
    async authorize(who, spiffeId) {
      if (!snapshot) throw new AuthorizerUnavailableError('workload placement not loaded yet');
      const runs = snapshot.workloads.some((w) => w.node === who.node && w.spiffeId === spiffeId);
      if (!runs) throw new IdentityNotAllowedError(who.node, spiffeId);
    },
    ready: () => snapshot !== undefined && tokens.size > 0,
    async close() {
      tokensFile.close();
      await source.close();
    },
  };
}
