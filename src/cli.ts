// meshlet's command line: init (capture), agent, ca, demo.
import { parseArgs } from 'node:util';
import { Agent } from './agent.ts';
import { cleanupCapture, dryRunText, installCapture, ipsetCreateArgs, sourceRouteText } from './capture/install.ts';
import { enableMigrateReq } from './capture/sysctl.ts';
import { CaptureTools } from './capture/tools.ts';
import { type CaBackend, defaults, loadAgentConfig, loadCaRotateConfig, costDefaults, loadCaServeConfig, loadCostConfig, loadInitConfig, loadPolicyCheckConfig } from './config.ts';
import { defaultCaptureSettings } from './capture/rules.ts';
import { CaError, ConfigError, MeshletError, PrerequisiteError } from './errors.ts';
import type { Logger } from 'pino';
import { createLocalAuthorizer, type NodeAuthorizer } from './ca/authorizer.ts';
import { CaService } from './ca/server.ts';
import { bundleSize } from './identity/pem.ts';
import { DirRootStore, ensureRoot, initRoot, ROOT_FILES, type RootSet, type RootStore, rotateRoot, type RotationStep } from './identity/roots.ts';
import { createLogger } from './telemetry/log.ts';
import { VERSION } from './version.ts';
import { loadKubeConfig } from './kube-config.ts';

const d = defaults;
const USAGE = `usage: meshlet <command> [flags]   (meshlet <command> --help, meshlet --version)

commands:
  init [--dry-run] [--cleanup] [--sidecar]
                                          install (or remove) the node's capture and probe gate
                                          (--sidecar: one pod's capture, run inside the pod)
  agent --node NAME (--workloads FILE | --kubernetes [--kubeconfig F])
        (--ca-dir DIR | --ca-url URL --token-file F --trust-bundle F)
                                          run the node agent
  ca init --out DIR [--trust-domain TD]  create a root CA (embedded in local-mode agents, or for ca serve)
  ca serve (--ca-dir DIR --tokens F --workloads F | --kubernetes)
                                          run the CA service (creates a root if there is none)
  ca rotate prepare|activate|finish (--ca-dir DIR | --kubernetes)
                                          one step of a root rotation (see ARCHITECTURE.md)
  policy check --from ID|IP --to WORKLOAD:PORT (--workloads FILE | --kubernetes [--kubeconfig F]) [--json]
                                          the decision the agents would make, and the policy behind it
                                          (exit 0 allowed, 1 denied)
  status [--admin URL] [--json]          a node agent's workloads, certificates, policies, connections
  cost [--nodes N --pods-per-node P ...] [--json]
                                          what sidecars and meshlet reserve in a cluster, and cost a month
  demo [--keep-logs]                      run a local demo mesh in network namespaces (root)

agent flags (defaults in brackets):
  --node NAME              this node's name [$MESHLET_NODE_NAME or $NODE_NAME]
  --sidecar NS/NAME        sidecar mode: serve only this workload, from inside its pod (run with
                           group id --proxy-gid; for measuring the sidecar pattern, see bench/cost)
  --workloads FILE         workloads YAML (trustDomain, nodes, workloads), reloaded on change
  --workloads-poll DUR     how often the file is checked [${d.workloadsPoll}]
  --kubernetes             workloads from the Kubernetes API (Pods, Namespaces; in-cluster config)
  --kubeconfig PATH        ... from the cluster this kubeconfig names (implies --kubernetes)
  --trust-domain TD        with --kubernetes: the mesh's trust domain [${d.ca.trustDomain}]
  --ca-dir DIR             embedded local CA: the root from \`meshlet ca init\`
  --cert-ttl DUR           with --ca-dir: workload certificate lifetime, renewed at half life [${d.certTtl}]
  --ca-url URL             the CA service (https://...); excludes --ca-dir
  --token-file FILE        this node's token for the CA, re-read per request
  --trust-bundle FILE      roots (PEM) that verify the CA service's certificate
  --bundle-poll DUR        how often the trust bundle is fetched (root rotation) [${d.bundlePoll}]
  --ca-timeout DUR         CA request timeout [${d.caRequestTimeout}]
  --connect-timeout DUR    upstream and tunnel connect timeout [${d.connectTimeout}]
  --handshake-timeout DUR  TLS handshake timeout [${d.handshakeTimeout}]
  --drain DUR              how long SIGTERM lets open connections finish [${d.drain}]
  --log-level LEVEL        fatal, error, warn, info, debug, trace [${d.logLevel}]
  --admin-port N --admin-address IP          /config_dump [${d.ports.admin} on ${d.adminAddress}]
  --readiness-port N --readiness-address IP  /healthz/ready [${d.ports.readiness} on ${d.readinessAddress}]
  --metrics-port N --metrics-address IP      Prometheus /metrics [${d.ports.metrics} on ${d.metricsAddress}]
  --metrics on|off --access-log on|off       telemetry [on, on]
  --max-connections N --max-connections-per-source N   connection limits [16384, 1024]
  --max-pending-handshakes N --max-pending-handshakes-per-source N   tunnel sockets still in their handshake, a budget of their own [1024, 64]
  --handshake-rate N       tunnel handshakes a second per source [200]
  --tunnel-stall-timeout DUR  reset a tunnel session whose peer stopped reading this long [30s]
  --tunnel-queue-budget MIB   tunnel send queues of the node together; past it stalled sessions are reset [256]
  --idle-timeout DUR       reset relayed connections silent both ways this long [1h]
  --preserve-source-ip on|off  local pods see their clients' addresses, not the node's [on]
  --non-tcp-to-strict allow|drop  drop UDP, SCTP and other non-TCP forwarded to STRICT pods (ICMP and the node's own pass) [allow]
  --probe-gate-ttl DUR     a dead or stalled agent's pods fail kubelet's probes this long after it stops [4s]
  --heap-headroom MIB      old-generation headroom above the live heap, once up: fewer full GCs on bulk traffic; 0 = V8's own [32]
  admin API: GET /config_dump, GET /logging, POST /logging?level=debug (runtime log level)

ca serve flags:
  --ca-dir DIR             root store (ca.key, ca.crt, trust-bundle.pem, next.*), re-read every --reload [${d.ca.reload}]
  --kubernetes             root in a Secret, bundle in a ConfigMap, TokenReview + pods for authorization:
    --kubeconfig PATH [in-cluster]  --namespace NS [${d.ca.namespace}]  --agent-service-account SA [${d.ca.agentServiceAccount}]
    --root-secret NAME [${d.ca.rootSecret}]  --bundle-configmap NAME [${d.ca.bundleConfigMap}]
  --trust-domain TD        trust domain of a root created on first start [${d.ca.trustDomain}]
  --listen-address IP --port N   [${d.ca.listenAddress}:${d.ca.port}]
  --tokens FILE            YAML: tokens: [{ node, token }] (local authorization)
  --workloads FILE         which pods run on which node (the agents' workloads file)
  --cert-ttl DUR           lifetime of issued certificates [${d.certTtl}]
  --max-body BYTES [${d.ca.maxBody}]  --rate N/s per client [${d.ca.rate}]  --burst N [${d.ca.burst}]
  --san NAME[,NAME]        serving certificate names and IPs [${d.ca.servingNames}]

cost flags (defaults in brackets; figures are Kubernetes quantities):
  --nodes N [${costDefaults.nodes}]  --pods-per-node N [${costDefaults.podsPerNode}]
  --sidecar-cpu Q --sidecar-memory Q   one sidecar's requests [${costDefaults.sidecarCpu}, ${costDefaults.sidecarMemory}: Istio's default]
  --agent-cpu Q --agent-memory Q       one meshlet agent's requests [${costDefaults.agentCpu}, ${costDefaults.agentMemory}: the DaemonSet's]
  --vcpu-hour PRICE --gib-hour PRICE   [${costDefaults.vcpuHour}, ${costDefaults.gibHour}: illustrative]  --hours-per-month N [${costDefaults.hoursPerMonth}]

capture flags (init and agent):
  --outbound-port N [${d.ports.outbound}]  --inbound-port N [${d.ports.inboundPlaintext}]  --tunnel-port N [${d.ports.tunnel}]
  --ipset NAME [${defaultCaptureSettings.ipset}]  --chain NAME [${defaultCaptureSettings.chain}]
  --destinations-ipset NAME [${defaultCaptureSettings.destinationsIpset}]   the mesh's pods and Service IPs: only these are captured
  --ipset6 NAME [${defaultCaptureSettings.ipset6}]   the captured pods' IPv6 addresses (the IPv6 guard)
  --gate-ipset NAME [${defaultCaptureSettings.gateIpset}]  --gate-chain NAME [${defaultCaptureSettings.gateChain}]   (the probe gate)
  --capture-backend iptables|nftables [${defaultCaptureSettings.backend}]   nftables where kube-proxy runs in nftables mode
  --proxy-gid N [${defaultCaptureSettings.proxyGid}]   sidecar mode: the agent's group id, whose connections are not captured

durations: 500ms, 20s, 5m, 24h. Exit codes: 0 ok, 1 failure, 2 bad flags, 3 missing privilege or tool.
`;

async function cmdInit(argv: string[]): Promise<number> {
  const config = loadInitConfig(argv);
  if (config.cleanup) {
    const script = await cleanupCapture(CaptureTools.spawned(), config.capture, { dryRun: config.dryRun });
    if (config.dryRun) process.stdout.write(script);
    else process.stderr.write(script ? 'meshlet init: capture removed\n' : 'meshlet init: nothing to remove\n');
    return 0;
  }
  const result = await installCapture(CaptureTools.spawned(), config.capture, { dryRun: config.dryRun });
  if (result.action === 'dry-run') {
    // stdout is exactly the iptables-restore (or nft -f) input, then the ip6tables-restore input
    // after a comment line; ipsets are created first.
    if (config.capture.backend === 'nftables') {
      process.stderr.write(`meshlet init --dry-run: would run \`nft -f -\` with the input below, then ${sourceRouteText()}:\n`);
    } else {
      const sets = ipsetCreateArgs(config.capture).map((a) => `\`ipset ${a.join(' ')}\``).join(' and ');
      const route = config.capture.mode === 'node' ? `, then ${sourceRouteText()}` : '';
      const v6 = result.script6 ? ', and `ip6tables-restore --noflush` with the input after its comment line' : '';
      process.stderr.write(`meshlet init --dry-run: would run ${sets ? `${sets}, then ` : ''}\`iptables-restore --noflush\` with the input below${v6}${route}:\n`);
    }
    process.stdout.write(dryRunText(result.script, result.script6));
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

/** parseArgs with its errors turned into ConfigError (exit code 2). */
function flags<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    throw new ConfigError([(err as Error).message]);
  }
}

async function cmdCaInit(argv: string[]): Promise<number> {
  const { values } = flags(() => parseArgs({ args: argv, strict: true, options: { out: { type: 'string' }, 'trust-domain': { type: 'string', default: d.ca.trustDomain } } }));
  if (!values.out) throw new ConfigError(['--out is required']);
  const created = await initRoot(new DirRootStore(String(values.out)), String(values['trust-domain']));
  if (!created) throw new CaError(`${values.out} already holds a root; refusing to overwrite it (losing a root breaks the mesh)`);
  process.stderr.write(`meshlet ca: root CA written to ${values.out}/${ROOT_FILES.cert} and ${values.out}/${ROOT_FILES.key}\n`);
  return 0;
}

/** The root store and authorizer a CA backend names. */
async function caBackend(backend: CaBackend, log: Logger): Promise<{ store: RootStore; authorizer?: NodeAuthorizer; onRoots?: (roots: RootSet) => Promise<void> }> {
  if (backend.kind === 'local') {
    const store = new DirRootStore(backend.caDir);
    if (!backend.tokensFile) return { store };
    return { store, authorizer: createLocalAuthorizer({ tokensFile: backend.tokensFile, workloadsFile: backend.workloadsFile, log }) };
  }
  const { bundlePublisher, createKubernetesAuthorizer, SecretRootStore } = await import('./ca/kubernetes.ts');
  const kc = await loadKubeConfig(backend.kubeconfig);
  return {
    store: new SecretRootStore(kc, backend.namespace, backend.rootSecret),
    authorizer: createKubernetesAuthorizer({ kubeConfig: kc, agentNamespace: backend.namespace, agentServiceAccount: backend.agentServiceAccount, log }),
    onRoots: bundlePublisher(kc, backend.namespace, backend.bundleConfigMap, log),
  };
}

async function cmdCaServe(argv: string[]): Promise<number> {
  const config = loadCaServeConfig(argv, process.env);
  const log = createLogger(config.logLevel, { component: 'ca' });
  const { store, authorizer, onRoots } = await caBackend(config.backend, log);
  if (!authorizer) throw new ConfigError(['ca serve needs an authorizer (--tokens and --workloads, or --kubernetes)']);
  const { created, set } = await ensureRoot(store, config.trustDomain);
  if (set.trustDomain !== config.trustDomain) {
    throw new CaError(`the root in ${store.where} is for trust domain ${set.trustDomain}, not --trust-domain ${config.trustDomain}`);
  }
  if (created) log.info({ store: store.where, signingRoot: set.signingFingerprint }, 'no root found: created one');
  const service = await CaService.start({
    store, authorizer, log, certTtlMs: config.certTtlMs, servingNames: config.servingNames, maxBodyBytes: config.maxBodyBytes,
    ratePerSecond: config.ratePerSecond, burst: config.burst, reloadMs: config.reloadMs, ...(onRoots ? { onRoots } : {}),
  });
  await service.listen(config.port, config.listenAddress);
  log.info({ address: config.listenAddress, port: config.port, trustDomain: set.trustDomain, authorizer: authorizer.name, store: store.where }, 'CA listening');
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  await service.close();
  log.info('CA stopped');
  return 0;
}

async function cmdCaRotate(argv: string[]): Promise<number> {
  const { step, backend } = loadCaRotateConfig(argv);
  const { store } = await caBackend(backend, createLogger('warn', { component: 'ca' }));
  const set = await rotateRoot(store, step as RotationStep);
  process.stderr.write(`meshlet ca rotate ${step}: signing root ${set.signingFingerprint}, ${bundleSize(set.trustBundlePem)} root(s) trusted\n`);
  return 0;
}

async function cmdPolicy(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'check') throw new ConfigError([`unknown policy command ${JSON.stringify(sub ?? '')} (expected: policy check)`]);
  const config = loadPolicyCheckConfig(rest);
  const { readSnapshotOnce } = await import('./workloads/from-config.ts');
  const { checkConnection, formatCheck } = await import('./policy/check.ts');
  const snapshot = await readSnapshotOnce(config.workloads, createLogger('warn', { component: 'policy-check' }));
  const result = checkConnection(snapshot, config.from, config.to);
  process.stdout.write(config.json ? `${JSON.stringify(result, null, 2)}\n` : formatCheck(result));
  return result.decision.allowed ? 0 : 1;
}

async function cmdStatus(argv: string[]): Promise<number> {
  const { values } = flags(() => parseArgs({ args: argv, strict: true, options: {
    admin: { type: 'string', default: `http://127.0.0.1:${d.ports.admin}` },
    json: { type: 'boolean', default: false },
  } }));
  const { fetchDump, formatStatus } = await import('./status.ts');
  const dump = await fetchDump(String(values.admin));
  process.stdout.write(values.json ? `${JSON.stringify(dump, null, 2)}\n` : formatStatus(dump));
  return dump.ready ? 0 : 1;
}

async function cmdCost(argv: string[]): Promise<number> {
  const { inputs, json } = loadCostConfig(argv);
  const { formatCost, projectCost } = await import('./cost.ts');
  const projection = projectCost(inputs);
  process.stdout.write(json ? `${JSON.stringify({ inputs, ...projection }, null, 2)}\n` : formatCost(projection, inputs));
  return 0;
}

async function cmdDemo(argv: string[]): Promise<number> {
  const { runDemo } = await import('./demo/demo.ts');
  return runDemo(argv);
}

/** The flag sections of USAGE each command takes. */
const SECTIONS: Record<string, string[]> = {
  agent: ['agent flags', 'capture flags'], init: ['capture flags'], ca: ['ca serve flags'], cost: ['cost flags'],
};

/**
 * `meshlet <command> --help`: the command's own lines of the command list, its flag sections and
 * the closing notes; the whole text for a command without sections of its own.
 */
export function usageFor(command: string): string {
  const blocks = USAGE.trimEnd().split('\n\n');
  const [head = '', list = '', ...sections] = blocks;
  const trailer = sections.at(-1) ?? '';
  // An entry of the command list starts two spaces in; deeper lines continue it.
  const entries: string[][] = [];
  for (const line of list.split('\n').slice(1)) {
    if (/^ {2}\S/.test(line)) entries.push([line]); else entries.at(-1)?.push(line);
  }
  const mine = entries.filter((e) => e[0]?.trim().split(/\s+/)[0] === command).map((e) => e.join('\n'));
  if (mine.length === 0) return USAGE;
  const flags = sections.filter((b) => (SECTIONS[command] ?? []).some((name) => b.startsWith(`${name} `) || b.startsWith(`${name}:`)));
  return `${[head.replace('<command>', command), `commands:\n${mine.join('\n')}`, ...flags, trailer].join('\n\n')}\n`;
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
