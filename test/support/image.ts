// The image test's container host: Debian's debootstrap, buildah, podman and runc, each against a
// storage of the test's own (vfs: no overlay mounts to leak), so nothing stays in the machine's.
// What the issue found on this kind of machine: crun fails on hybrid cgroups (hence runc), and
// without explicit ulimits runc's setrlimit is refused.
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCommand } from '../../src/capture/exec.ts';
import type { MeshletRole, MeshletRunner } from '../../src/demo/lab-spec.ts';

export const REPO = resolve(fileURLToPath(import.meta.url), '../../..');
export const TOOLS = ['debootstrap', 'buildah', 'podman', 'runc', 'nsenter'];
/** The DaemonSet's user for the CA (manifests/ca.yaml), and the capabilities init and agent get. */
export const CA_USER = 65532;
const NODE_CAPS = ['NET_ADMIN', 'NET_RAW'];

/** The hard limit on open files here: runc may set up to it, and the agent wants many. */
function openFilesLimit(): number {
  const m = /^Max open files\s+\d+\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return m ? Math.min(Number(m[1]), 1 << 20) : 1024;
}

/** The Debian release and mirror this machine's apt uses: the base is made from the same packages. */
export function debianSource(): { suite: string; mirror: string } {
  const suite = /^VERSION_CODENAME=(\S+)/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? 'bookworm';
  let mirror = 'http://deb.debian.org/debian';
  for (const f of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    try {
      const text = readFileSync(f, 'utf8');
      const uri = /^URIs:\s*(\S+)/m.exec(text)?.[1] ?? /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+main/m.exec(text)?.[1];
      if (uri && !uri.includes('security')) { mirror = uri; break; }
    } catch { /* the next file */ }
  }
  return { suite, mirror };
}

async function must(cmd: string, args: string[], what: string): Promise<string> {
  const r = await runCommand(cmd, args);
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}): ${(r.stderr || r.stdout).trim().slice(-4000)}`);
  return r.stdout;
}

const XTABLES_LOCK = '/run/xtables.lock';

export class ContainerHost {
  readonly started: Array<{ role: MeshletRole; name: string; args: string[] }> = [];
  #seq = 0;
  #madeLock = false;

  readonly dir: string;
  readonly prefix: string;

  private constructor(dir: string, prefix: string) {
    this.dir = dir;
    this.prefix = prefix;
  }

  static async create(prefix: string): Promise<ContainerHost> {
    return new ContainerHost(await mkdtemp(join(tmpdir(), `${prefix}-image-`)), prefix);
  }

  get #storage(): string[] {
    return ['--root', join(this.dir, 'storage'), '--runroot', join(this.dir, 'run'), '--storage-driver', 'vfs'];
  }

  /** podman's own flags: no systemd here to manage cgroups or keep an event journal. */
  get podman(): string[] {
    return [...this.#storage, '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
  }

  get #limits(): string[] {
    const files = openFilesLimit();
    return ['--runtime', 'runc', '--ulimit', `nofile=${files}:${files}`, '--ulimit', 'nproc=4096:4096'];
  }

  /**
   * A minimal Debian root made with debootstrap from the machine's mirror, imported as `tag`; with
   * `node24Tag`, the same root with Node 24 in /usr/local/bin and npm beside it, imported as that:
   * the layout of node:24-slim, for the Dockerfile's other branch. Node is this checkout's
   * node-linux-<arch> binary, npm the npm registry's own package.
   */
  async makeBase(tag: string, node24Tag?: string): Promise<void> {
    const { suite, mirror } = debianSource();
    const root = join(this.dir, 'rootfs');
    await must('debootstrap', ['--variant=minbase', suite, root, mirror], `debootstrap ${suite} from ${mirror}`);
    // What a registry's debian:slim leaves out too: downloaded packages and the package lists.
    await rm(join(root, 'var/cache/apt'), { recursive: true, force: true });
    await rm(join(root, 'var/lib/apt/lists'), { recursive: true, force: true });
    const importAs = (t: string) => must('sh', ['-c', `tar -C "$1" -c . | podman ${this.podman.join(' ')} import - "$2"`, 'sh', root, t], 'podman import');
    await must('mkdir', ['-p', join(root, 'var/cache/apt/archives/partial'), join(root, 'var/lib/apt/lists/partial')], 'mkdir');
    await importAs(tag);
    if (node24Tag) {
      await must('cp', [join(REPO, `node_modules/node-linux-${process.arch}/bin/node`), join(root, 'usr/local/bin/node')], 'copy Node');
      const tgz = (await must('npm', ['pack', 'npm@11', '--silent', '--pack-destination', this.dir], 'npm pack npm')).trim().split('\n').at(-1)!;
      const npmDir = join(root, 'usr/local/lib/node_modules/npm');
      await must('mkdir', ['-p', npmDir], 'mkdir');
      await must('tar', ['-xzf', join(this.dir, tgz), '-C', npmDir, '--strip-components=1'], 'unpack npm');
      await must('ln', ['-s', '../lib/node_modules/npm/bin/npm-cli.js', join(root, 'usr/local/bin/npm')], 'link npm');
      await importAs(node24Tag);
    }
    await rm(root, { recursive: true, force: true });
  }

  /**
   * Builds the repository's Dockerfile on `base`. The machine's CA bundle is mounted for npm (a
   * TLS-intercepting proxy may sit between it and the registry); nothing of it lands in the image.
   */
  async build(tag: string, base: string): Promise<void> {
    const files = openFilesLimit();
    await must('buildah', [...this.#storage, 'build', '--network', 'host', '--runtime', 'runc', '--ulimit', `nofile=${files}:${files}`, '--ulimit', 'nproc=4096:4096',
      '--volume', '/etc/ssl/certs:/run/host-certs:ro', '--build-arg', 'NODE_EXTRA_CA_CERTS=/run/host-certs/ca-certificates.crt',
      '--build-arg', `BASE=${base}`, '-t', tag, '-f', join(REPO, 'Dockerfile'), REPO], 'buildah build');
  }

  async imageSize(tag: string): Promise<number> {
    return Number((await must('podman', [...this.podman, 'image', 'inspect', '--format', '{{.Size}}', tag], 'podman image inspect')).trim());
  }

  /** `podman run` of the image with a one-off command, outside any lab. */
  run(image: string, args: string[], entrypoint?: string, user?: number): ReturnType<typeof runCommand> {
    return runCommand('podman', [...this.podman, 'run', '--rm', ...this.#limits, ...(entrypoint ? ['--entrypoint', entrypoint] : []),
      ...(user === undefined ? [] : ['--user', `${user}:${user}`]), image, ...args]);
  }

  /**
   * `podman exec` in a running container. A container on the host network has no network namespace
   * of its own, so the exec lands in the caller's: pass the node's (`ns`) to reach the agent there,
   * as `kubectl exec` into a hostNetwork pod lands in the node's.
   */
  exec(name: string, args: string[], ns?: string): ReturnType<typeof runCommand> {
    const podman = ['podman', ...this.podman, 'exec', name, ...args];
    return ns
      ? runCommand('ip', ['netns', 'exec', ns, 'nsenter', `--mount=/proc/${process.pid}/ns/mnt`, '--', ...podman])
      : runCommand(podman[0]!, podman.slice(1));
  }

  /** Stops every container while conmon still runs to unmount what podman mounted for it. */
  async stopAll(): Promise<void> {
    await runCommand('podman', [...this.podman, 'stop', '--all', '--time', '10']);
  }

  /**
   * A lab runner that starts each role from the image as the manifests do: init and agent as root
   * with only NET_ADMIN and NET_RAW (manifests/agent-daemonset.yaml), the CA as 65532 with none
   * (manifests/ca.yaml), all with a read-only root and no privilege escalation, in the host network
   * of the namespace they are spawned in. `ip netns exec` remounts /sys, where runc finds the
   * cgroups, so podman runs back in this process's mount namespace (the network one stays).
   */
  runner(image: string): MeshletRunner {
    return {
      command: (role, args, labDir) => {
        const name = `${this.prefix}-${role}-${++this.#seq}`;
        this.started.push({ role, name, args });
        const who = role === 'ca' ? ['--user', `${CA_USER}:${CA_USER}`] : ['--user', '0', '--cap-add', NODE_CAPS.join(',')];
        const mounts = role === 'ca' ? [] : ['--volume', `${XTABLES_LOCK}:${XTABLES_LOCK}`];
        return {
          cmd: 'nsenter',
          args: [`--mount=/proc/${process.pid}/ns/mnt`, '--', 'podman', ...this.podman, 'run', '--rm', '--name', name, ...this.#limits,
            '--network', 'host', '--read-only', '--read-only-tmpfs=false', '--security-opt', 'no-new-privileges', '--cap-drop', 'ALL', ...who,
            ...mounts, '--volume', `${labDir}:${labDir}:ro`, image, ...args],
        };
      },
    };
  }

  /** What the CA's user needs of a lab made by root: to pass through its folder and read the CA's. */
  static async shareWithCa(labDir: string, caDir: string): Promise<void> {
    await chmod(labDir, 0o755);
    await must('chown', ['-R', `${CA_USER}:${CA_USER}`, caDir], 'chown the CA folder');
  }

  /** The lock file iptables-legacy takes, mounted as the DaemonSet does (hostPath, FileOrCreate). */
  async ensureXtablesLock(): Promise<void> {
    try {
      await writeFile(XTABLES_LOCK, '', { flag: 'wx' });
      this.#madeLock = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }

  async destroy(): Promise<void> {
    if (this.#madeLock) await rm(XTABLES_LOCK, { force: true });
    await runCommand('podman', [...this.podman, 'rm', '--all', '--force', '--time', '0']);
    await runCommand('buildah', [...this.#storage, 'rm', '--all']);
    // A container whose conmon was killed with its namespace keeps its /dev/shm mount: lift any left.
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m?.startsWith(`${this.dir}/`));
    for (const m of mounts.reverse()) await runCommand('umount', ['-l', m!]);
    await rm(this.dir, { recursive: true, force: true });
  }
}
