// One version everywhere: package.json's is the one the binary reports, the image is tagged with
// and labelled with, and the kustomizations deploy.
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
});

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
