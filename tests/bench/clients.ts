// The kubelet's side of the benchmark: the built-in load generator (load.ts, a grpc-js client in
// its own process) or an outside kubelet-like program given with --client, such as csibench (a
// grpc-go client: the kubelet's own stack). Both publish N fresh volumes, publish them again,
// ask their stats and unpublish them, C calls at a time, and say p50, p99 and ops/s per phase.
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Job, PhaseResult } from "./load.ts";

export type Operation = "publish" | "republish" | "stats" | "unpublish";
export const OPERATIONS: Operation[] = ["publish", "republish", "stats", "unpublish"];

/** One phase as the client saw it. */
export interface PhaseStats {
  count: number;
  errors: number;
  firstError?: string;
  p50Ms: number;
  p99Ms: number;
  opsPerSec: number;
}

export interface Client {
  /** How the report names it. */
  name: string;
  /** Publishes `volumes` fresh volumes, re-publishes, stats and unpublishes them. */
  ops(
    csiSocketPath: string,
    kubeletRoot: string,
    volumes: number,
    concurrency: number,
  ): Promise<Record<Operation, PhaseStats>>;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

function stats(result: PhaseResult): PhaseStats {
  const sorted = [...result.latenciesMs].sort((a, b) => a - b);
  return {
    count: result.count,
    errors: result.errors,
    ...(result.firstError !== undefined && { firstError: result.firstError }),
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    opsPerSec: (result.count / result.elapsedMs) * 1000,
  };
}

/** load.ts in a process of its own. */
export function builtInClient(phaseLimitMs: number): Client {
  return {
    name: "the built-in grpc-js client (tests/bench/load.ts)",
    async ops(csiSocketPath, kubeletRoot, volumes, concurrency) {
      const job: Job = { csiSocketPath, kubeletRoot, volumes, concurrency, phaseLimitMs };
      const child = Bun.spawn(
        [process.execPath, join(import.meta.dir, "load.ts"), JSON.stringify(job)],
        { stdout: "pipe", stderr: "inherit", env: process.env },
      );
      const output = await new Response(child.stdout).text();
      if ((await child.exited) !== 0) throw new Error(`load generator failed: ${output}`);
      rmSync(kubeletRoot, { recursive: true, force: true });
      const results: Record<Operation, PhaseResult> = JSON.parse(output);
      return Object.fromEntries(
        OPERATIONS.map((operation) => [operation, stats(results[operation])]),
      ) as Record<Operation, PhaseStats>;
    },
  };
}

const CSIBENCH_LINE =
  /^(\w+) n=(\d+) c=\d+ errors=(\d+) total=[\d.]+ms ops\/s=([\d.]+) p50=([\d.]+)ms p99=([\d.]+)ms$/;

/** An outside program that speaks csibench's flags and prints its lines. */
export function programClient(path: string): Client {
  return {
    name: `\`${path.split("/").pop()}\` (--client ${path})`,
    async ops(csiSocketPath, kubeletRoot, volumes, concurrency) {
      const pods = join(kubeletRoot, "pods");
      mkdirSync(pods, { recursive: true });
      const child = Bun.spawn(
        [
          path,
          "-endpoint",
          csiSocketPath,
          "-root",
          pods,
          "-n",
          String(volumes),
          "-c",
          String(concurrency),
        ],
        { stdout: "pipe", stderr: "pipe" },
      );
      const [output, errors] = await Promise.all([
        new Response(child.stdout).text(),
        new Response(child.stderr).text(),
      ]);
      if ((await child.exited) !== 0) throw new Error(`${path} failed: ${errors}`);
      rmSync(kubeletRoot, { recursive: true, force: true });
      const phases = new Map<string, PhaseStats>();
      for (const line of output.trim().split("\n")) {
        const match = CSIBENCH_LINE.exec(line.trim());
        if (!match) continue;
        const [, name, count, failed, opsPerSec, p50, p99] = match;
        phases.set(name as string, {
          count: Number(count) - Number(failed),
          errors: Number(failed),
          ...(Number(failed) > 0 && { firstError: errors.split("\n")[0] }),
          p50Ms: Number(p50),
          p99Ms: Number(p99),
          opsPerSec: Number(opsPerSec),
        });
      }
      return Object.fromEntries(
        OPERATIONS.map((operation) => {
          const phase = phases.get(operation);
          if (!phase) throw new Error(`${path} printed no ${operation} line: ${output}`);
          return [operation, phase];
        }),
      ) as Record<Operation, PhaseStats>;
    },
  };
}
