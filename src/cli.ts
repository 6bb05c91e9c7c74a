// meshlet's command line: init (capture), agent, ca, demo.
import { Agent } from './agent.ts';
import { cleanupCapture, dryRunText, installCapture, ipsetCreateArgs, sourceRouteText } from './capture/install.ts';
import { iptablesTool, resolveIptablesMode } from './capture/iptables-mode.ts';
import { enableMigrateReq } from './capture/sysctl.ts';
import { CaptureTools } from './capture/tools.ts';
import { AGENT_FLAGS, HEAP_HEADROOM_MIB, loadAgentConfig } from './config/agent.ts';
import { CA_INIT_FLAGS, CA_ROTATE_FLAGS, CA_SERVE_FLAGS, type CaBackend, loadCaInitConfig, loadCaRotateConfig, loadCaServeConfig } from './config/ca.ts';
import { INIT_FLAGS, loadInitConfig } from './config/capture.ts';
import { CHECK_FLAGS, COST_FLAGS, loadCheckConfig, loadCostConfig, loadPolicyCheckConfig, loadPolicySuggestConfig, loadStatusConfig, POLICY_CHECK_FLAGS, POLICY_SUGGEST_FLAGS, STATUS_FLAGS } from './config/commands.ts';
import { type Flag, flagHelp } from './config/flags.ts';
import { CaError, ConfigError, MeshletError, PrerequisiteError } from './errors.ts';
import type { Logger } from 'pino';
import type { KubeConfig } from '@kubernetes/client-node';
import type { NodeAuthorizer } from './ca/authorizer.ts';
import { CaMetrics } from './ca/metrics.ts';
import { CaService } from './ca/server.ts';
import { createMetricsServer } from './admin/server.ts';
import { listen } from './proxy/listeners.ts';
import { bundleSize } from './identity/pem.ts';
import { apiStatus, loadKubeConfig } from './kube/config.ts';
import { DirRootStore, ensureRoot, initRoot, ROOT_FILES, type RootSet, type RootStore, rotateRoot, type RotationStep } from './identity/roots.ts';
import { trimMallocEvery } from './malloc-tuning.ts';
import { type KeptMemory, keepMemory } from './memory-target.ts';
import { releaseStartupPagesOnce } from './startup-pages.ts';
import { createLogger } from './telemetry/log.ts';
import { VERSION } from './version.ts';

/** The commands, as the help lists them; each with its flag tables (config/), which --help prints. */
const COMMANDS: ReadonlyArray<{ name: string; usage: string; what: string; flags?: ReadonlyArray<{ title: string; table: readonly Flag[] }> }> = [
  { name: 'init', usage: 'init [--dry-run] [--cleanup] [--sidecar]', what: 'install (or remove) the node\'s capture and probe gate (--sidecar: one pod\'s capture, run inside the pod)', flags: [{ title: 'init', table: INIT_FLAGS }] },
  {
    name: 'agent', usage: 'agent --node NAME (--workloads FILE | --kubernetes [--kubeconfig F]) (--ca-dir DIR | --ca-url URL --token-file F --trust-bundle F)',
    what: 'run the node agent (admin API: GET /config_dump, GET /logging, POST /logging?level=debug)', flags: [{ title: 'agent', table: AGENT_FLAGS }],
  },
  { name: 'ca', usage: 'ca init --out DIR [--trust-domain TD]', what: 'create a root CA (embedded in local-mode agents, or for ca serve)', flags: [{ title: 'ca init', table: CA_INIT_FLAGS }] },
  { name: 'ca', usage: 'ca serve (--ca-dir DIR --tokens F --workloads F | --kubernetes)', what: 'run the CA service (creates a root if there is none)', flags: [{ title: 'ca serve', table: CA_SERVE_FLAGS }] },
  { name: 'ca', usage: 'ca rotate prepare|activate|finish (--ca-dir DIR | --kubernetes)', what: 'one step of a root rotation (see ARCHITECTURE.md)', flags: [{ title: 'ca rotate', table: CA_ROTATE_FLAGS }] },
  {
    name: 'policy', usage: 'policy check --from ID|IP --to NS/NAME:PORT (--workloads FILE | --kubernetes [--kubeconfig F]) [--json]',
    what: 'the decision the agents would make, and the policy behind it (exit 0 allowed, 1 denied, 4 could not decide)', flags: [{ title: 'policy check', table: POLICY_CHECK_FLAGS }],
  },
  {
    name: 'policy', usage: 'policy suggest --access-log FILE (--workloads FILE | --kubernetes) [--audit] [--output crd|workloads]',
    what: 'least-privilege policies admitting exactly the traffic the agents logged, per destination identity', flags: [{ title: 'policy suggest', table: POLICY_SUGGEST_FLAGS }],
  },
  { name: 'check', usage: 'check --pre | check [--kubeconfig F] [--json]', what: 'before install, what this node needs; after, the cluster: a line per check, with what to do (exit 1 when one fails)', flags: [{ title: 'check', table: CHECK_FLAGS }] },
  { name: 'status', usage: 'status [--admin URL] [--json]', what: 'a node agent\'s workloads, certificates, policies, connections', flags: [{ title: 'status', table: STATUS_FLAGS }] },
  { name: 'cost', usage: 'cost [--nodes N --pods-per-node P ... | --agents URL ... --window 60s] [--json]', what: 'what sidecars and meshlet reserve in a cluster, and cost a month (figures are Kubernetes quantities)', flags: [{ title: 'cost', table: COST_FLAGS }] },
  { name: 'demo', usage: 'demo [--keep-logs]', what: 'run a local demo mesh in network namespaces (root)' },
  { name: 'version', usage: 'version', what: 'meshlet\'s version, and Node\'s (also --version, -V)' },
];

const TRAILER = 'durations: 500ms, 20s, 5m, 24h. Exit codes: 0 ok, 1 failure, 2 bad flags, 3 missing privilege or tool.';

/** `meshlet --help`: every command, and where each one's flags are. */
const USAGE = `usage: meshlet <command> [flags]   (meshlet <command> --help for its flags)

commands:
${COMMANDS.map((c) => `  ${c.usage}\n      ${c.what}`).join('\n')}

${TRAILER}
`;

/** `meshlet <command> --help`: the command's usage lines and its flag tables; the command list for any other word. */
export function usageFor(command: string): string {
  const mine = COMMANDS.filter((c) => c.name === command);
  if (mine.length === 0) return USAGE;
  const sections = mine.flatMap((c) => c.flags ?? []).map((f) => `${f.title} flags (defaults in brackets):\n${flagHelp(f.table)}`);
  const usage = `usage:\n${mine.map((c) => `  meshlet ${c.usage}\n      ${c.what}`).join('\n')}`;
  return `${[usage, ...sections, TRAILER].join('\n\n')}\n`;
}

async function cmdInit(argv: string[]): Promise<number> {
  const loaded = loadInitConfig(argv);
  const tools = CaptureTools.spawned();
  // Into the iptables kube-proxy and the CNI use (capture/iptables-mode.ts), said before anything is written.
  const { settings: capture, reason } = await resolveIptablesMode(tools, loaded.capture);
  if (capture.backend === 'iptables') process.stderr.write(`meshlet init: iptables mode ${capture.iptablesMode} (${reason})\n`);
  const config = { ...loaded, capture };
  if (config.cleanup) {
    const script = await cleanupCapture(tools, config.capture, { dryRun: config.dryRun });
    // stdout is exactly the commands that would run; whether there are any is said on stderr.
    if (config.dryRun) process.stdout.write(script);
    if (!script) process.stderr.write(`meshlet init${config.dryRun ? ' --dry-run' : ''}: nothing of meshlet's is installed; nothing to remove\n`);
    else if (!config.dryRun) process.stderr.write('meshlet init: capture removed\n');
    return 0;
  }
  const result = await installCapture(tools, config.capture, { dryRun: config.dryRun });
  if (result.action === 'dry-run') {
    // stdout is exactly the iptables-restore (or nft -f) input, then the ip6tables-restore input
    // after a comment line; ipsets are created first.
    if (config.capture.backend === 'nftables') {
      process.stderr.write(`meshlet init --dry-run: would run \`nft -f -\` with the input below, then ${sourceRouteText()}:\n`);
    } else {
      const sets = ipsetCreateArgs(config.capture).map((a) => `\`ipset ${a.join(' ')}\``).join(' and ');
      const route = config.capture.mode === 'node' ? `, then ${sourceRouteText()}` : '';
      const v6 = result.script6 ? `, and \`${iptablesTool(config.capture, 6, 'restore')} --noflush\` with the input after its comment line` : '';
      process.stderr.write(`meshlet init --dry-run: would run ${sets ? `${sets}, then ` : ''}\`${iptablesTool(config.capture, 4, 'restore')} --noflush\` with the input below${v6}${route}:\n`);
    }
    process.stdout.write(dryRunText(config.capture, result.script, result.script6));
  } else {
    process.stderr.write(`meshlet init: capture ${result.action}\n`);
    // Not fatal: without it an upgrade may reset connections queued at the moment of the switch.
    const migrate = await enableMigrateReq();
    process.stderr.write(`meshlet init: net.ipv4.tcp_migrate_req ${migrate.ok ? migrate.detail : `not set: ${migrate.detail}`}\n`);
  }
  return 0;
}

async function cmdAgent(argv: string[]): Promise<number> {
  const config = loadAgentConfig(argv, process.env);
  const log = createLogger(config.logLevel, { node: config.nodeName, ...(config.sidecar ? { sidecar: `${config.sidecar.namespace}/${config.sidecar.name}` } : {}) });
  log.info({ version: VERSION, node: process.version }, 'meshlet agent starting');
  const agent = await Agent.start(config, { log });
  await new Promise<void>((resolve) => {
    let signals = 0;
    // The first signal drains (--drain); a second stops at once, as an operator who sends it means.
    const stop = (signal: string) => {
      signals++;
      if (signals > 1) {
        log.warn({ signal }, 'second signal: stopping now, without the drain');
        void agent.destroy();
        return;
      }
      log.info({ signal, drainMs: config.drainMs }, 'draining');
      agent.close().then(resolve, (err) => { log.error({ err: (err as Error).message }, 'error while closing'); resolve(); });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  log.info('agent stopped');
  return 0;
}

async function cmdCa(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'init': return cmdCaInit(rest);
    case 'serve': return cmdCaServe(rest);
    case 'rotate': return cmdCaRotate(rest);
    default: throw new ConfigError([`unknown ca command ${JSON.stringify(sub ?? '')} (expected: ca init, ca serve, ca rotate)`]);
  }
}

async function cmdCaInit(argv: string[]): Promise<number> {
  const { out, trustDomain, keyAlgorithm } = loadCaInitConfig(argv);
  const created = await initRoot(new DirRootStore(out), trustDomain, keyAlgorithm);
  if (!created) throw new CaError(`${out} already holds a root; refusing to overwrite it (losing a root breaks the mesh)`);
  process.stderr.write(`meshlet ca: root CA written to ${out}/${ROOT_FILES.cert} and ${out}/${ROOT_FILES.key}\n`);
  return 0;
}

/** The root store and authorizer a CA backend names. */
async function caBackend(backend: CaBackend, log: Logger): Promise<{ store: RootStore; authorizer?: NodeAuthorizer; onRoots?: (roots: RootSet) => Promise<void>; kubeConfig?: KubeConfig }> {
  if (backend.kind === 'local') {
    const store = new DirRootStore(backend.caDir);
    if (!backend.tokensFile) return { store };
    // Loaded when used, like the Kubernetes backend: it brings the workloads file's YAML parser.
    const { createLocalAuthorizer } = await import('./ca/authorizer.ts');
    return { store, authorizer: createLocalAuthorizer({ tokensFile: backend.tokensFile, workloadsFile: backend.workloadsFile, log }) };
  }
  // The configuration first: it makes client-node load less (kube/load-less.ts) before the backend's modules resolve.
  const kc = await loadKubeConfig(backend.kubeconfig);
  const { bundlePublisher, createKubernetesAuthorizer, SecretRootStore } = await import('./ca/kubernetes.ts');
  return {
    kubeConfig: kc,
    store: new SecretRootStore(kc, backend.namespace, backend.rootSecret),
    authorizer: createKubernetesAuthorizer({ kubeConfig: kc, agentNamespace: backend.namespace, agentServiceAccount: backend.agentServiceAccount, log }),
    onRoots: bundlePublisher(kc, backend.namespace, backend.bundleConfigMap, log),
  };
}

async function cmdCaServe(argv: string[]): Promise<number> {
  const config = loadCaServeConfig(argv, process.env);
  const log = createLogger(config.logLevel, { component: 'ca' });
  trimMallocEvery(config.mallocTrimMs); // signing bursts leave free memory behind (malloc-tuning.ts)
  const { store, authorizer, onRoots, kubeConfig } = await caBackend(config.backend, log);
  if (!authorizer) throw new ConfigError(['ca serve needs an authorizer (--tokens and --workloads, or --kubernetes)']);
  const { created, set } = await ensureRoot(store, config.trustDomain);
  if (set.trustDomain !== config.trustDomain) {
    throw new CaError(`the root in ${store.where} is for trust domain ${set.trustDomain}, not --trust-domain ${config.trustDomain}`);
  }
  if (created) log.info({ store: store.where, signingRoot: set.signingFingerprint }, 'no root found: created one');
  // The roots (and the memory target) are read at scrape time, once they exist (no scrape comes before the service listens).
  let service: CaService | undefined, memory: KeptMemory | undefined;
  const metrics = config.metrics ? new CaMetrics(() => service!.roots, () => memory?.target.state()) : undefined;
  service = await CaService.start({
    store, authorizer, log, certTtlMs: config.certTtlMs, servingNames: config.servingNames, maxBodyBytes: config.maxBodyBytes,
    ratePerSecond: config.ratePerSecond, burst: config.burst, reloadMs: config.reloadMs, ...(onRoots ? { onRoots } : {}),
    ...(metrics ? { onRequest: (outcome: string, seconds: number) => metrics.request(outcome, seconds) } : {}),
  });
  await service.listen(config.port, config.listenAddress);
  const metricsServer = metrics ? createMetricsServer(() => metrics.text()) : undefined;
  if (metricsServer && config.metrics) await listen(metricsServer, { port: config.metrics.port, host: config.metrics.address });
  log.info({ address: config.listenAddress, port: config.port, trustDomain: set.trustDomain, authorizer: authorizer.name, store: store.where }, 'CA listening');
  // In a cluster: MeshPolicy status, and the address slices when asked (ca/cluster-parts.ts).
  const parts = kubeConfig ? await (await import('./ca/cluster-parts.ts')).startClusterParts(kubeConfig, config, log) : [];
  releaseStartupPagesOnce(config.releaseStartupPages, log); // start-up is over (startup-pages.ts)
  memory = keepMemory({ headroomMiB: HEAP_HEADROOM_MIB, targetMiB: config.memoryTargetMiB, log }); // as the agent's: under V8's own sizing a burst of CSRs took the CA past its goal (bench/README.md, "Dead chunks collected")
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  memory.stop();
  for (const part of parts) await part.close();
  await service.close();
  metricsServer?.close();
  log.info('CA stopped');
  return 0;
}

async function cmdCaRotate(argv: string[]): Promise<number> {
  const { step, backend, keyAlgorithm } = loadCaRotateConfig(argv);
  const { store } = await caBackend(backend, createLogger('warn', { component: 'ca' }));
  const set = await rotateRoot(store, step as RotationStep, keyAlgorithm);
  process.stderr.write(`meshlet ca rotate ${step}: signing root ${set.signingFingerprint}, ${bundleSize(set.trustBundlePem)} root(s) trusted\n`);
  return 0;
}

async function cmdPolicy(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'suggest') return cmdPolicySuggest(rest);
  if (sub !== 'check') throw new ConfigError([`unknown policy command ${JSON.stringify(sub ?? '')} (expected: policy check, policy suggest)`]);
  const config = loadPolicyCheckConfig(rest);
  const { readSnapshotOnce } = await import('./workloads/from-config.ts');
  const { checkConnection, formatCheck } = await import('./policy/check.ts');
  // Quiet: what went wrong is the one line below, not the source's retries as log lines.
  const snapshot = await readSnapshotOnce(config.workloads, createLogger('silent'), 10_000).catch((err: Error) => {
    const problems = (err as { problems?: string[] }).problems;
    process.stderr.write(`meshlet policy check: could not decide: ${problems ? problems.join('; ') : err.message}\n`);
    return undefined;
  });
  if (!snapshot) return 4;
  const result = checkConnection(snapshot, config.from, config.to);
  process.stdout.write(config.json ? `${JSON.stringify(result, null, 2)}\n` : formatCheck(result));
  return result.decision.allowed ? 0 : 1;
}

async function cmdPolicySuggest(argv: string[]): Promise<number> {
  const config = loadPolicySuggestConfig(argv);
  const { readSnapshotOnce } = await import('./workloads/from-config.ts');
  const { formatSuggestions, observedConnections, suggestPolicies } = await import('./policy/suggest.ts');
  const { readFile } = await import('node:fs/promises');
  const texts = await Promise.all(config.accessLogs.map((f) => readFile(f === '-' ? '/dev/stdin' : f, 'utf8')
    .catch((err: Error) => { throw new ConfigError([`--access-log: cannot read ${f}: ${err.message}`]); })));
  const { seen, skipped } = observedConnections(texts.join('\n'));
  const snapshot = await readSnapshotOnce(config.workloads, createLogger('silent'), 10_000);
  const { policies, notes } = suggestPolicies(seen, snapshot, { audit: config.audit });
  const { stringify } = await import('yaml');
  process.stdout.write(formatSuggestions(policies, config.output, stringify));
  process.stderr.write(`meshlet policy suggest: ${seen.length} connection(s) seen, ${policies.length} polic${policies.length === 1 ? 'y' : 'ies'} proposed` +
    `${skipped ? `, ${skipped} line(s) not understood` : ''}\n${notes.map((n) => `  ${n}\n`).join('')}`);
  return 0;
}

async function cmdCheck(argv: string[]): Promise<number> {
  const config = loadCheckConfig(argv);
  const { evaluateNode, formatChecks, gatherNodeFacts } = await import('./check/node.ts');
  const results = config.scope === 'node' ? evaluateNode(await gatherNodeFacts(CaptureTools.spawned())) : await checkCluster(config.kubeconfig);
  process.stdout.write(config.json ? `${JSON.stringify(results, null, 2)}\n` : formatChecks(results));
  return results.some((r) => r.level === 'fail') ? 1 : 0;
}

/** An error's message with its cause's code (fetch says only "fetch failed"). */
function withCause(err: Error): string {
  const cause = err.cause as NodeJS.ErrnoException | undefined;
  return cause ? `${err.message} (${cause.code ?? cause.message})` : err.message;
}

/** The cluster checks; an API that cannot be read is itself the one failed check. */
async function checkCluster(kubeconfig: string | undefined) {
  const { evaluateCluster, gatherClusterFacts } = await import('./check/cluster.ts');
  const kc = await loadKubeConfig(kubeconfig);
  try {
    return evaluateCluster(await gatherClusterFacts(kc), Date.now());
  } catch (err) {
    const status = apiStatus(err);
    return [{ name: 'API', level: 'fail' as const, detail: `${kc.getCurrentCluster()?.server ?? '?'}: ${status ? `HTTP ${status}` : withCause(err as Error)}`,
      hint: status === 401 || status === 403 ? 'the kubeconfig\'s user may not read nodes, namespaces, pods, DaemonSets, Deployments, ConfigMaps and CRDs' : 'is the kubeconfig\'s cluster reachable from here?' }];
  }
}

async function cmdStatus(argv: string[]): Promise<number> {
  const config = loadStatusConfig(argv);
  const { fetchDump, formatStatus } = await import('./status.ts');
  const dump = await fetchDump(config.admin);
  process.stdout.write(config.json ? `${JSON.stringify(dump, null, 2)}\n` : formatStatus(dump));
  return dump.ready ? 0 : 1;
}

async function cmdCost(argv: string[]): Promise<number> {
  const { inputs, json, measure } = loadCostConfig(argv);
  if (measure) return (await import('./cost-measured.ts')).runMeasured(measure, inputs, json);
  const { formatCost, projectCost } = await import('./cost.ts');
  const projection = projectCost(inputs);
  process.stdout.write(json ? `${JSON.stringify({ inputs, ...projection }, null, 2)}\n` : formatCost(projection, inputs));
  return 0;
}

async function cmdDemo(argv: string[]): Promise<number> {
  const { runDemo } = await import('./demo/demo.ts');
  return runDemo(argv);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--version' || command === '-V' || command === 'version') {
    process.stdout.write(`meshlet ${VERSION} (node ${process.version}, ${process.platform}-${process.arch})\n`);
    return 0;
  }
  if (command && (rest.includes('--help') || rest.includes('-h'))) {
    process.stdout.write(usageFor(command));
    return 0;
  }
  switch (command) {
    case 'init': return cmdInit(rest);
    case 'agent': return cmdAgent(rest);
    case 'ca': return cmdCa(rest);
    case 'policy': return cmdPolicy(rest);
    case 'check': return cmdCheck(rest);
    case 'status': return cmdStatus(rest);
    case 'cost': return cmdCost(rest);
    case 'demo': return cmdDemo(rest);
    case undefined: case '-h': case '--help': case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`meshlet: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

/** Runs one command and sets the exit code: typed errors map to 2 (config), 3 (prerequisite) or 1. */
export function run(argv: string[]): void {
  main(argv).then(
    (code) => { process.exitCode = code; },
    (err: unknown) => {
      if (err instanceof MeshletError) {
        process.stderr.write(`meshlet: ${err.message} [${err.code}]\n`);
        process.exitCode = err instanceof ConfigError ? 2 : err instanceof PrerequisiteError ? 3 : 1;
      } else {
        process.stderr.write(`meshlet: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
        process.exitCode = 1;
      }
    },
  );
}

if (import.meta.main) run(process.argv.slice(2));
