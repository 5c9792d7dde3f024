// One version everywhere: package.json's is the one the binary reports, the image is tagged with
// and labelled with, the kustomizations deploy, and the Helm chart is versioned with and deploys.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parse } from "yaml";
import { spawnDriver } from "../helpers/driver.ts";

const repo = resolve(import.meta.dir, "../..");
const { version } = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as {
  version: string;
};

test("package.json's version is a semantic version", () => {
  expect(version).toMatch(/^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/);
});

test("the built binary reports it", async () => {
  const driver = spawnDriver(["--version"]);
  const stdout = await new Response(driver.proc.stdout).text();
  expect((await driver.exited()).code).toBe(0);
  expect(stdout.trim()).toBe(version);
}, 60_000);

test("the Containerfile labels the image with it", () => {
  const containerfile = readFileSync(join(repo, "Containerfile"), "utf8");
  expect(/^ARG VERSION=(.*)$/m.exec(containerfile)?.[1]).toBe(version);
});

test.each([
  "deploy/kubernetes/kustomization.yaml",
  "deploy/kubernetes/example-agent/kustomization.yaml",
])("%s deploys the image of that version", (path) => {
  const kustomization = parse(readFileSync(join(repo, path), "utf8")) as {
    images: { name: string; newTag?: string }[];
  };
  const image = kustomization.images.find((i) => i.name === "spiffe-csi-driver");
  expect(image?.newTag).toBe(version);
});

test("the Helm chart's version and appVersion are it (so is the image tag it deploys)", () => {
  const chart = parse(
    readFileSync(join(repo, "deploy", "helm", "spiffe-csi-driver", "Chart.yaml"), "utf8"),
  ) as { version: string; appVersion: string };
  expect(chart.version).toBe(version);
  expect(chart.appVersion).toBe(version);
  const values = parse(
    readFileSync(join(repo, "deploy", "helm", "spiffe-csi-driver", "values.yaml"), "utf8"),
  ) as { image: { tag: string } };
  // An empty tag deploys the appVersion.
  expect(values.image.tag).toBe("");
});

// node-driver-registrar: one release wherever the registrar is deployed, named here once.
const registrar = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.18.0";

test.each([
  "deploy/kubernetes/daemonset.yaml",
  "deploy/kubernetes/agent-daemonset/daemonset-patch.yaml",
])("%s runs node-driver-registrar's release", (path) => {
  const images = [...readFileSync(join(repo, path), "utf8").matchAll(/image: (\S*registrar\S*)/g)];
  expect(images.map((m) => m[1])).toEqual([registrar]);
});

test("the Helm chart's default registrar is that release, in its values and its schema", () => {
  const chart = join(repo, "deploy", "helm", "spiffe-csi-driver");
  const values = parse(readFileSync(join(chart, "values.yaml"), "utf8")) as {
    nodeDriverRegistrar: { image: { registry: string; repository: string; tag: string } };
  };
  const { registry, repository, tag } = values.nodeDriverRegistrar.image;
  expect(`${registry}/${repository}:${tag}`).toBe(registrar);
  const schema = JSON.parse(readFileSync(join(chart, "values.schema.json"), "utf8"));
  expect(schema.properties.nodeDriverRegistrar.properties.image.properties.tag.default).toBe(tag);
});
