/**
 * `npm start` as a new user runs it: the program starts on the embedded backend, prints the URL
 * it serves, runs a meeting task for a shipped WAV file to COMPLETED with the file's duration,
 * and stops cleanly (exit code 0) on SIGTERM.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect } from "effect"

const root = fileURLToPath(new URL("..", import.meta.url))

/** The duration in seconds a WAV file's header gives: data bytes / byte rate. */
const wavDuration = (path: string): number => {
  const file = readFileSync(path)
  expect(file.toString("ascii", 0, 4)).toBe("RIFF")
  expect(file.toString("ascii", 8, 12)).toBe("WAVE")
  let byteRate = 0
  for (let offset = 12; offset + 8 <= file.length; ) {
    const id = file.toString("ascii", offset, offset + 4)
    const size = file.readUInt32LE(offset + 4)
    if (id === "fmt ") byteRate = file.readUInt32LE(offset + 16)
    if (id === "data") return size / byteRate
    offset += 8 + size + (size % 2)
  }
  throw new Error(`${path} has no data chunk`)
}

/**
 * The command `npm start` runs, from package.json, spawned without npm and its shell in between
 * (they do not pass SIGTERM on), its executables found in node_modules/.bin as npm finds them.
 */
const startCommand = (): [string, Array<string>] => {
  const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8"))
  const [command, ...args] = String(pkg.scripts.start).trim().split(/\s+/)
  expect(command).toBeDefined()
  return [command!, args]
}

/** Output of the program so far, and a way to wait for a line matching a pattern. */
const watch = (child: ChildProcess) =>
  Effect.gen(function* () {
    let output = ""
    const url = yield* Deferred.make<string>()
    const onData = (chunk: Buffer) => {
      output += chunk.toString()
      const match = /task API on (http:\/\/[^\s"]+)/.exec(output)
      if (match) Deferred.unsafeDone(url, Effect.succeed(match[1]!))
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    return { url, output: () => output }
  })

const exitOf = (child: ChildProcess) =>
  Effect.async<{ code: number | null; signal: NodeJS.Signals | null }>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return resume(Effect.succeed({ code: child.exitCode, signal: child.signalCode }))
    }
    child.once("exit", (code, signal) => resume(Effect.succeed({ code, signal })))
  })

it.live(
  "npm start serves the API with a worker: a meeting task for samples/standup.wav completes with its duration; SIGTERM exits 0",
  () =>
    Effect.gen(function* () {
      const sample = `${root}samples/standup.wav`
      const expected = wavDuration(sample)

      // A new user's environment: no backend chosen, so the embedded one.
      const { QUEUE_BACKEND: _b, TASK_STORE: _s, QUEUE_NAME: _q, ...env } = process.env
      const [command, args] = startCommand()
      const child = yield* Effect.acquireRelease(
        Effect.sync(() =>
          spawn(command, args, {
            cwd: root,
            env: { ...env, PORT: "0", PATH: `${root}node_modules/.bin:${env.PATH ?? ""}` },
            stdio: ["ignore", "pipe", "pipe"]
          })
        ),
        (child) =>
          Effect.sync(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"))
      )
      const program = yield* watch(child)
      const base = yield* Deferred.await(program.url).pipe(
        Effect.timeoutFail({
          duration: "60 seconds",
          onTimeout: () => new Error(`no URL printed; output:\n${program.output()}`)
        })
      )

      const post = yield* Effect.promise(() =>
        fetch(`${base}/tasks`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            task_id: "standup-1",
            data: { audio_files: ["samples/standup.wav"], meeting_type: "standup" }
          })
        }).then(async (response) => ({ status: response.status, json: await response.json() }))
      )
      expect(post).toEqual({ status: 202, json: { task_id: "standup-1", status: "PENDING" } })

      // biome-ignore lint/suspicious/noExplicitAny: a JSON record, checked field by field
      let record: any
      for (let i = 0; i < 200; i++) {
        record = yield* Effect.promise(() => fetch(`${base}/tasks/standup-1`).then((r) => r.json()))
        if (record.status === "COMPLETED" || record.status === "FAILED") break
        yield* Effect.sleep("100 millis")
      }
      expect(record).toMatchObject({
        task_id: "standup-1",
        status: "COMPLETED",
        attempts: 1,
        result: {
          meeting_type: "standup",
          files: [{ path: "samples/standup.wav" }],
          total_duration_seconds: expect.closeTo(expected, 3)
        }
      })
      expect(record.result.files[0].duration_seconds).toBeCloseTo(expected, 3)

      child.kill("SIGTERM")
      const exit = yield* exitOf(child).pipe(
        Effect.timeoutFail({
          duration: Duration.seconds(30),
          onTimeout: () => new Error(`no exit after SIGTERM; output:\n${program.output()}`)
        })
      )
      expect({ ...exit, output: exit.code === 0 ? "" : program.output() }).toEqual({
        code: 0,
        signal: null,
        output: ""
      })
    }).pipe(Effect.scoped),
  120_000
)
