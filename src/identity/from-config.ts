// The certificate provider an AgentConfig names: the embedded local CA or the CA service.
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/agent.ts';
import { type CertificateProvider, createLocalCaProvider } from './provider.ts';
import { DirRootStore, loadRootSet } from './roots.ts';

/** The embedded local CA (--ca-dir) or the CA service (--ca-url). */
export async function identityProvider(config: AgentConfig, log: Logger, trustDomain: () => string): Promise<CertificateProvider & { close?(): Promise<void> }> {
  const id = config.identity;
  if (id.mode === 'local') {
    const roots = await loadRootSet(new DirRootStore(id.caDir));
    return createLocalCaProvider(roots, { trustDomain, ttlMs: id.certTtlMs });
  }
  // Loaded on demand: undici (the CA client's HTTP client) is RSS that an agent with the embedded CA
  // never uses (bench/README.md, "Measurements behind the code").
  const { createCaClientProvider } = await import('./ca-client.ts');
  return createCaClientProvider({
    url: id.url, tokenFile: id.tokenFile, trustBundleFile: id.trustBundleFile, log,
    bundlePollMs: id.bundlePollMs, requestTimeoutMs: id.requestTimeoutMs,
  });
}
