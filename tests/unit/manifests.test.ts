// The deployment files validate against the Kubernetes API schemas, and their pieces agree with
// each other and with the driver's flags.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "citty";
import { DaemonSet } from "kubernetes-models/apps/v1";
import { CSIDriver } from "kubernetes-models/storage.k8s.io/v1";
import { Namespace, Pod, ServiceAccount } from "kubernetes-models/v1";
import { parseAllDocuments } from "yaml";
import { configFromArgs, args as driverArgs } from "../../src/cli.ts";
import { normalizeArgv } from "../../src/flags.ts";

const deploy = resolve(import.meta.dir, "../../deploy");
const kubernetes = join(deploy, "kubernetes");

type Manifest = { apiVersion: string; kind: string; metadata: { name: string } } & Record<
  string,
  unknown
>;

function documents(file: string): Manifest[] {
  return parseAllDocuments(readFileSync(join(kubernetes, file), "utf8")).map((doc) => {
    expect(doc.errors).toEqual([]);
    return doc.toJS() as Manifest;
  });
}

const models: Record<string, new (data: never) => { validate(): void }> = {
  "v1/Namespace": Namespace,
  "v1/ServiceAccount": ServiceAccount,
  "v1/Pod": Pod,
  "apps/v1/DaemonSet": DaemonSet,
  "storage.k8s.io/v1/CSIDriver": CSIDriver,
};

const files = readdirSync(kubernetes).filter(
  (f) => f.endsWith(".yaml") && f !== "kustomization.yaml",
);
const all = files.flatMap((file) => documents(file).map((doc) => ({ file, doc })));
const find = <T = Manifest>(kind: string) => all.find(({ doc }) => doc.kind === kind)?.doc as T;

describe("every manifest validates against the Kubernetes API schema", () => {
  test.each(files)("%s", (file) => {
    for (const doc of documents(file)) {
      const Model = models[`${doc.apiVersion}/${doc.kind}`];
      expect(Model, `${doc.apiVersion}/${doc.kind} has a schema`).toBeDefined();
      expect(() =>
        new (Model as new (data: Manifest) => { validate(): void })(doc).validate(),
      ).not.toThrow();
    }
  });

  test("a broken manifest does not validate (the check can fail)", () => {
    const broken = structuredClone(find("DaemonSet")) as Manifest;
    (broken.spec as { template: { spec: { containers: unknown } } }).template.spec.containers =
      "nope";
    expect(() => new DaemonSet(broken as never).validate()).toThrow();
  });
});

describe("the pieces agree", () => {
  type Container = {
    name: string;
    args?: string[];
    env?: { name: string; value?: string }[];
    volumeMounts: {
      name: string;
      mountPath: string;
      subPath?: string;
      mountPropagation?: string;
    }[];
  };
  type Volume = { name: string; hostPath?: { path: string }; emptyDir?: object };
  const daemonSet = find<{
    spec: { template: { spec: { containers: Container[]; volumes: Volume[] } } };
  }>("DaemonSet");
  const { containers, volumes } = daemonSet.spec.template.spec;
  const driver = containers.find((c) => c.name === "spiffe-csi-driver") as Container;
  const registrar = containers.find((c) => c.name === "node-driver-registrar") as Container;
  const volume = (name: string) => volumes.find((v) => v.name === name) as Volume;
  const driverConfig = configFromArgs(
    parseArgs(normalizeArgv(driver.args ?? []), driverArgs) as Record<string, unknown>,
    { MY_NODE_NAME: "node-1" },
  );
  const flag = (container: Container, name: string) =>
    container.args?.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
  const env = (container: Container, name: string) =>
    container.env?.find((e) => e.name === name)?.value ?? "";
  /** The node path behind a path in a container, through its volume mounts. */
  const nodePath = (container: Container, path: string) => {
    const mount = container.volumeMounts
      .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
      .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
    if (!mount) throw new Error(`${path} is on no volume of ${container.name}`);
    const host = volume(mount.name).hostPath?.path;
    if (!host) throw new Error(`${path} is not on a hostPath volume`);
    return join(host, mount.subPath ?? "", path.slice(mount.mountPath.length));
  };
  const kubeletDir = volume("kubelet-dir").hostPath?.path ?? "";

  test("the driver's flags are ones it accepts", () => {
    expect(driverConfig.csiSocketPath).toBe("/spiffe-csi/csi.sock");
  });

  test("the driver and the registrar share the CSI socket, and the kubelet finds it", () => {
    const driverSocket = nodePath(driver, driverConfig.csiSocketPath);
    expect(nodePath(registrar, flag(registrar, "csi-address") ?? "")).toBe(driverSocket);
    const registrationPath = (flag(registrar, "kubelet-registration-path") ?? "").replace(
      "$(KUBELET_DIR)",
      env(registrar, "KUBELET_DIR"),
    );
    expect(registrationPath).toBe(driverSocket);
    expect(driverSocket).toBe(join(kubeletDir, "plugins", driverConfig.pluginName, "csi.sock"));
  });

  test("the registrar writes into the kubelet's plugins_registry", () => {
    expect(nodePath(registrar, "/registration")).toBe(join(kubeletDir, "plugins_registry"));
  });

  test("the kubelet's directory is at its node path in the driver, with Bidirectional propagation", () => {
    const mount = driver.volumeMounts.find((m) => m.name === "kubelet-dir" && !m.subPath);
    expect(mount?.mountPath).toBe(kubeletDir);
    expect(mount?.mountPropagation).toBe("Bidirectional");
  });

  test("the Workload API directory comes from a hostPath, never an emptyDir", () => {
    expect(nodePath(driver, driverConfig.workloadApiSocketDir)).toBe("/run/spire/agent-sockets");
    expect(volumes.filter((v) => v.emptyDir)).toEqual([]);
  });

  test("the CSIDriver object, the plugin name and the example workload name the same driver", () => {
    const csiDriver = find<{ metadata: { name: string }; spec: Record<string, unknown> }>(
      "CSIDriver",
    );
    expect(csiDriver.metadata.name).toBe(driverConfig.pluginName);
    expect(csiDriver.spec).toEqual({
      attachRequired: false,
      podInfoOnMount: true,
      fsGroupPolicy: "None",
      volumeLifecycleModes: ["Ephemeral"],
    });
    const pod = find<{ spec: { volumes: { csi?: { driver: string; readOnly: boolean } }[] } }>(
      "Pod",
    );
    const inline = pod.spec.volumes.find((v) => v.csi)?.csi;
    expect(inline).toEqual({ driver: driverConfig.pluginName, readOnly: true });
  });

  test("the driver container is privileged with a read-only root file system", () => {
    const security = (driver as unknown as { securityContext: Record<string, unknown> })
      .securityContext;
    expect(security).toMatchObject({ privileged: true, readOnlyRootFilesystem: true });
  });

  test("the kubelet root is set in one place: kustomize carries it to every field that holds it", () => {
    const kustomization = parseAllDocuments(
      readFileSync(join(kubernetes, "kustomization.yaml"), "utf8"),
    )[0]?.toJS() as {
      resources: string[];
      configMapGenerator: { literals: string[] }[];
      replacements: { targets: { fieldPaths: string[] }[] }[];
    };
    const literal = kustomization.configMapGenerator[0]?.literals.find((l) =>
      l.startsWith("kubeletDir="),
    );
    expect(literal).toBe(`kubeletDir=${kubeletDir}`);
    const fieldPaths = kustomization.replacements.flatMap((r) =>
      r.targets.flatMap((t) => t.fieldPaths),
    );
    expect(fieldPaths.sort()).toEqual(
      [
        "spec.template.spec.volumes.[name=kubelet-dir].hostPath.path",
        "spec.template.spec.containers.[name=spiffe-csi-driver].volumeMounts.[mountPath=/var/lib/kubelet].mountPath",
        "spec.template.spec.containers.[name=node-driver-registrar].env.[name=KUBELET_DIR].value",
      ].sort(),
    );
    // Every field the replacements write holds the root today, and nothing else in the
    // DaemonSet names it.
    expect(env(registrar, "KUBELET_DIR")).toBe(kubeletDir);
    const text = readFileSync(join(kubernetes, "daemonset.yaml"), "utf8");
    expect(text.split(kubeletDir).length - 1).toBe(3);
    expect(kustomization.resources.sort()).toEqual(
      files.filter((f) => f !== "workload.yaml").sort(),
    );
    // kustomize writes every list element a selector matches: each must match exactly one.
    for (const fieldPath of fieldPaths) {
      expect(`${fieldPath}: ${resolveFieldPath(daemonSet, fieldPath).length}`).toBe(
        `${fieldPath}: 1`,
      );
    }
  });

  // Where kubectl is installed, the kustomization is rendered too.
  test.if(Bun.which("kubectl") !== null)(
    "kubectl kustomize renders valid manifests with unique mount paths",
    () => {
      const rendered = Bun.spawnSync(["kubectl", "kustomize", kubernetes], { stderr: "pipe" });
      expect(rendered.stderr.toString()).toBe("");
      const docs = parseAllDocuments(rendered.stdout.toString()).map(
        (doc) => doc.toJS() as Manifest,
      );
      for (const doc of docs) {
        const Model = models[`${doc.apiVersion}/${doc.kind}`];
        if (Model)
          expect(() =>
            new (Model as new (data: Manifest) => { validate(): void })(doc).validate(),
          ).not.toThrow();
      }
      const renderedSet = docs.find((d) => d.kind === "DaemonSet") as unknown as typeof daemonSet;
      for (const container of renderedSet.spec.template.spec.containers) {
        const paths = container.volumeMounts.map((m) => m.mountPath);
        expect(new Set(paths).size).toBe(paths.length);
      }
      expect(JSON.stringify(renderedSet)).toContain('"mountPath":"/spiffe-csi"');
    },
    60_000,
  );
});

/** The elements a kustomize field path (`a.b.[key=value].c`) reaches, as kustomize finds them. */
function resolveFieldPath(root: unknown, fieldPath: string): unknown[] {
  let nodes: unknown[] = [root];
  for (const segment of fieldPath.split(/\.(?![^[]*\])/)) {
    const selector = /^\[(\w+)=(.*)\]$/.exec(segment);
    nodes = nodes.flatMap((node) => {
      if (selector) {
        return Array.isArray(node)
          ? node.filter(
              (item) =>
                String((item as Record<string, unknown>)[selector[1] as string]) === selector[2],
            )
          : [];
      }
      const value = (node as Record<string, unknown> | undefined)?.[segment];
      return value === undefined ? [] : [value];
    });
  }
  return nodes;
}

describe("the systemd unit", () => {
  const unit = readFileSync(join(deploy, "systemd", "spiffe-csi-driver.service"), "utf8");
  const environment = Object.fromEntries(
    [...unit.matchAll(/^Environment=(\w+)=(.*)$/gm)].map((m) => [m[1] as string, m[2] as string]),
  );
  const execStart = /^ExecStart=((?:[^\n]*\\\n)*[^\n]*)$/m.exec(unit)?.[1] ?? "";
  const argv = execStart
    .replaceAll("\\\n", " ")
    .trim()
    .split(/\s+/)
    .map((word) =>
      word
        .replace(/\$\{(\w+)\}/g, (_, name: string) => environment[name] ?? "")
        .replace("%H", "node-1"),
    );

  test("runs the binary with flags it accepts, registering itself with the kubelet", () => {
    expect(argv[0]).toBe("/usr/local/bin/spiffe-csi-driver");
    const config = configFromArgs(
      parseArgs(normalizeArgv(argv.slice(1)), driverArgs) as Record<string, unknown>,
      {},
    );
    expect(config.kubeletRegistration).toEqual({
      dir: "/var/lib/kubelet/plugins_registry",
      endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
    });
    expect(config.csiSocketPath).toBe("/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock");
  });

  test("restarts on failure and starts after the agent", () => {
    expect(unit).toMatch(/^Restart=on-failure$/m);
    expect(unit).toMatch(/^After=spire-agent\.service$/m);
  });
});

describe("versions", () => {
  const version = (
    JSON.parse(readFileSync(resolve(deploy, "../package.json"), "utf8")) as { version: string }
  ).version;

  test("the Containerfile's version label and the kustomization's image tag are the package version", () => {
    const containerfile = readFileSync(resolve(deploy, "../Containerfile"), "utf8");
    expect(/^ARG VERSION=(.*)$/m.exec(containerfile)?.[1]).toBe(version);
    const kustomization = readFileSync(join(kubernetes, "kustomization.yaml"), "utf8");
    expect(/^\s+newTag: (.*)$/m.exec(kustomization)?.[1]).toBe(version);
  });
});
