// The project names itself in one place, package.json's repository; what points at it elsewhere
// (the image's source label, the systemd unit's documentation) says the same, and the licence the
// package and the image name is there in full.
import { expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import pkg from "../../package.json" with { type: "json" };

const repo = join(import.meta.dir, "../..");
const read = (path: string) => readFileSync(join(repo, path), "utf8");

test("package.json names the project's repository", () => {
  expect(pkg.repository).toEqual({
    type: "git",
    url: "https://github.com/spiffe-csi-driver/spiffe-csi-driver",
  });
});

test("the image's source label points at the project", () => {
  expect(read("Containerfile")).toContain(
    `org.opencontainers.image.source="${pkg.repository.url}"`,
  );
});

test("the systemd unit's documentation points at the project", () => {
  const lines = read("deploy/systemd/spiffe-csi-driver.service").split("\n");
  expect(lines.filter((line) => line.startsWith("Documentation="))).toEqual([
    `Documentation=${pkg.repository.url}`,
  ]);
});

test("LICENSE holds the Apache License 2.0 that package.json and the image name", () => {
  const license = read("LICENSE");
  expect(pkg.license).toBe("Apache-2.0");
  expect(read("Containerfile")).toContain('org.opencontainers.image.licenses="Apache-2.0"');
  expect(license).toContain("Apache License\n                           Version 2.0, January 2004");
  expect(license).toContain("END OF TERMS AND CONDITIONS");
  for (let section = 1; section <= 9; section++) expect(license).toContain(`\n   ${section}. `);
});

// The documentation: a short front page, one page per task under docs/, each saying first what it
// is for, and every relative link leading to a file, and to a heading there, that exists.
const pages = [
  "README.md",
  "CONTRIBUTING.md",
  "SECURITY.md",
  "deploy/helm/spiffe-csi-driver/README.md",
  ...readdirSync(join(repo, "docs"))
    .filter((name) => name.endsWith(".md"))
    .map((name) => `docs/${name}`),
];

/** GitHub's anchor of a heading: lower case, spaces as dashes, other punctuation dropped. */
const anchorOf = (heading: string) =>
  heading
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, "")
    .replaceAll(" ", "-");

/** The anchors of a Markdown file's headings, outside code blocks. */
function anchors(text: string): Set<string> {
  const found = new Set<string>();
  let fenced = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) fenced = !fenced;
    const heading = /^#{1,6} (.+)$/.exec(line);
    if (!fenced && heading) found.add(anchorOf(heading[1] as string));
  }
  return found;
}

test("the README is the front page: at most 250 lines", () => {
  expect(read("README.md").split("\n").length).toBeLessThanOrEqual(250);
});

test.each(pages.filter((page) => page.startsWith("docs/")))(
  "%s starts with its title and one paragraph saying what it is for",
  (page) => {
    const [title, blank, purpose] = read(page).split("\n");
    expect(title).toMatch(/^# \S/);
    expect(blank).toBe("");
    expect(purpose).toMatch(/^[A-Z`]/);
  },
);

test.each(pages)("every relative link of %s leads to a file and a heading that exist", (page) => {
  const problems: string[] = [];
  for (const [, target] of read(page).matchAll(/\]\(([^)\s]+)\)/g)) {
    if (/^[a-z]+:/.test(target as string)) continue;
    const [path, anchor] = (target as string).split("#") as [string, string | undefined];
    const file = path ? join(dirname(join(repo, page)), path) : join(repo, page);
    if (!existsSync(file)) {
      problems.push(`${target}: no such file`);
      continue;
    }
    if (anchor && !anchors(readFileSync(file, "utf8")).has(anchor))
      problems.push(`${target}: no such heading`);
  }
  expect(problems).toEqual([]);
});

test("docs/architecture.md names every file under src/ (but the generated ones)", () => {
  const page = read("docs/architecture.md");
  const files = [...new Bun.Glob("src/**/*.ts").scanSync(repo)].filter(
    (file) => !file.startsWith("src/gen/"),
  );
  expect(files.length).toBeGreaterThan(50);
  const unnamed = files.filter((file) => !page.includes(`\`${file.split("/").at(-1)}\``));
  expect(unnamed).toEqual([]);
});

test("the build lays out bytecode by the committed profiles, which the image build copies too", () => {
  for (const name of ["serve", "probe"]) {
    const profile = read(`scripts/bytecode-order/${name}.order`);
    // Bun's format: a version line, then one line per function, by the hash of its syntax.
    expect(profile.startsWith("v2\n")).toBe(true);
    expect(profile.split("\n").filter((line) => line.startsWith("F ")).length).toBeGreaterThan(
      1000,
    );
  }
  expect(read("scripts/build.ts")).toContain("bytecodeOrder");
  expect(read("Containerfile")).toContain("COPY scripts/bytecode-order/ scripts/bytecode-order/");
});
