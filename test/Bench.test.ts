/**
 * Smoke test of the benchmark program: a tiny run on the memory backend only, checking the shape
 * of its JSON output. No timing is asserted.
 */
import { execFile } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"

const dir = mkdtempSync(join(tmpdir(), "bench-test-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const runBench = (args: ReadonlyArray<string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "programs/bench.ts", ...args],
      { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : (error.code as number | null), stdout, stderr })
    )
  })

describe("programs/bench.ts", () => {
  it("runs every scenario on the memory backend and writes its JSON", { timeout: 90_000 }, async () => {
    const out = join(dir, "bench.json")
    const result = await runBench([
      "--n",
      "40",
      "--runs",
      "2",
      "--concurrency",
      "1,4",
      "--batch",
      "10",
      "--only",
      "memory",
      "--rate",
      "100",
      "--duration",
      "0.2",
      "--in-process",
      "--json",
      out
    ])
    expect(result.stderr).not.toMatch(/FAILED/)
    expect(result.code).toBe(0)
    expect(result.stdout).toContain("### Throughput (median tasks/s)")
    expect(result.stdout).toContain("### Targets of the issue")

    const json = JSON.parse(readFileSync(out, "utf8"))
    expect(json.options).toMatchObject({
      n: 40,
      runs: 2,
      concurrency: [1, 4],
      batch: 10,
      subjects: ["memory"]
    })
    expect(typeof json.machine.nproc).toBe("number")
    const scenarios = json.cells.map((cell: { scenario: string }) => cell.scenario).sort()
    expect(scenarios).toEqual(
      [
        "batch.10",
        "cycle.c1",
        "cycle.c4",
        "latency.c1",
        "push.c1",
        "push.c4",
        "queue.c1",
        "queue.c4",
        "worker.c1",
        "worker.c4"
      ].sort()
    )
    for (const cell of json.cells) {
      expect(cell.subject).toBe("memory")
      expect(cell.outcomes).toHaveLength(2)
      for (const outcome of cell.outcomes) {
        expect(outcome._tag).toBe("Ok")
        if (cell.scenario.startsWith("latency")) {
          expect(outcome.sample.observed).toBe(20)
          expect(typeof outcome.sample.p99Ms).toBe("number")
        } else {
          expect(outcome.sample.rate).toBeGreaterThan(0)
          expect(typeof outcome.sample.cpuUsPerTask).toBe("number")
          if (process.platform === "linux") {
            expect(outcome.sample.mainCpuUsPerTask).toBeGreaterThanOrEqual(0)
            expect(outcome.sample.mainCpuUsPerTask).toBeLessThanOrEqual(outcome.sample.cpuUsPerTask + 10_000)
          }
        }
      }
      if (cell.scenario.startsWith("worker") || cell.scenario.startsWith("queue")) {
        expect(cell.median.rssPeakMiB).toBeGreaterThan(0)
      }
    }
    expect(json.targets.map((t: { verdict: string }) => t.verdict)).toContain("not run")
  })

  it("rejects an unknown subject with a readable message", async () => {
    const result = await runBench(["--only", "kafka"])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain("--only: unknown subject kafka")
  })
})
