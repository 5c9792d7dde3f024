// A container of a rendered pod, laid out as the container runtime would: a root of its own (a
// tmpfs, entered with chroot) holding the system's programs and libraries, the driver's binary at
// /spiffe-csi-driver (the image's entrypoint), and each volumeMount bound from its hostPath volume
// with its readOnly and mountPropagation. Node paths are this machine's paths: tests render with
// kubeletPath and agentSocketPath under a temporary directory. Everything is mounted in the test's
// private mount namespace and removed by `unmount`.
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readlinkSync,
  rmdirSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { BINARY } from "./driver.ts";
import { mountsAt, mountsUnder } from "./kubelet.ts";

export type ContainerSpec = {
  name: string;
  volumeMounts?: {
    name: string;
    mountPath: string;
    mountPropagation?: string;
    readOnly?: boolean;
  }[];
};
export type VolumeSpec = { name: string; hostPath?: { path: string; type?: string } };

const mountCommand = Bun.which("mount");
const umountCommand = Bun.which("umount");

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${argv.join(" ")} exited with ${result.exitCode}: ${result.stderr}`);
  }
}

export class ContainerRoot {
  /** Node directories made shared mount points, for propagation into and out of containers. */
  private readonly shared: string[] = [];
  /** Those of them this bound onto themselves, unmounted at the end. */
  private readonly bound: string[] = [];

  constructor(readonly root: string) {
    if (!mountCommand || !umountCommand) {
      throw new Error("laying out a container needs mount and umount (util-linux) on PATH");
    }
  }

  /** The node's side of a propagating mount: a shared mount point at the hostPath itself. */
  private share(path: string): void {
    if (this.shared.includes(path)) return;
    if (mountsAt(path) === 0) {
      run(mountCommand as string, "--bind", path, path);
      this.bound.push(path);
    }
    run(mountCommand as string, "--make-shared", path);
    this.shared.push(path);
  }

  /** Builds the root and binds the container's volume mounts into it. */
  layOut(container: ContainerSpec, volumes: VolumeSpec[]): void {
    const mount = mountCommand as string;
    mkdirSync(this.root, { recursive: true });
    run(mount, "-t", "tmpfs", "-o", "mode=0755", "tmpfs", this.root);
    // The image's programs and libraries (mount, umount, the C library), /proc and /dev; links
    // such as /bin -> usr/bin are copied as links.
    for (const entry of ["bin", "sbin", "lib", "lib32", "lib64", "usr", "etc", "proc", "dev"]) {
      const path = `/${entry}`;
      if (!existsSync(path)) continue;
      const inRoot = join(this.root, entry);
      if (lstatSync(path).isSymbolicLink()) {
        symlinkSync(readlinkSync(path), inRoot);
      } else {
        mkdirSync(inRoot);
        run(mount, "--rbind", path, inRoot);
      }
    }
    writeFileSync(join(this.root, "spiffe-csi-driver"), "");
    run(mount, "--bind", BINARY, join(this.root, "spiffe-csi-driver"));
    for (const volumeMount of container.volumeMounts ?? []) {
      const hostPath = volumes.find((v) => v.name === volumeMount.name)?.hostPath;
      if (!hostPath)
        throw new Error(`${container.name}: ${volumeMount.name} is no hostPath volume`);
      if (hostPath.type === "DirectoryOrCreate") mkdirSync(hostPath.path, { recursive: true });
      if (!existsSync(hostPath.path)) throw new Error(`hostPath ${hostPath.path} does not exist`);
      const target = join(this.root, volumeMount.mountPath);
      mkdirSync(target, { recursive: true });
      const propagation = volumeMount.mountPropagation ?? "None";
      if (propagation !== "None") this.share(hostPath.path);
      run(mount, "--bind", hostPath.path, target);
      // Bidirectional: the bind is the node's peer (mounts go both ways); HostToContainer: its
      // slave (the node's mounts reach the container); None: private.
      if (propagation === "HostToContainer") run(mount, "--make-slave", target);
      else if (propagation !== "Bidirectional") run(mount, "--make-private", target);
      if (volumeMount.readOnly) run(mount, "-o", "remount,bind,ro", target);
    }
  }

  /** Removes the root's mounts, then the node's shared mount points, then the root. */
  unmount(): void {
    const umount = umountCommand as string;
    if (mountsUnder(this.root) > 0) run(umount, "--recursive", this.root);
    for (const path of this.bound.reverse()) run(umount, path);
    if (existsSync(this.root)) rmdirSync(this.root);
  }
}
