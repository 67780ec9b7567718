/**
 * The sample meeting pipeline on real files: the shipped samples, hand-built WAV layouts, and the
 * failures a bad file gives (permanent or retried).
 */
import { FileSystem } from "@effect/platform"
import { SystemError } from "@effect/platform/Error"
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Logger, Schedule } from "effect"
import * as MemoryQueue from "../layers/MemoryQueue.js"
import * as MemoryTaskStore from "../layers/MemoryTaskStore.js"
import * as MeetingPipeline from "../programs/meeting-pipeline.js"
import { Pipeline } from "../src/Pipeline.js"
import { QueueManager } from "../src/QueueManager.js"
import { TaskMessage } from "../src/Task.js"
import { TaskStore } from "../src/TaskStore.js"
import { TaskWorker } from "../src/TaskWorker.js"

interface WavLayout {
  readonly channels?: number
  readonly sampleRate?: number
  readonly bitsPerSample?: number
  readonly dataBytes: number
  /** Chunks placed between `fmt ` and `data`, e.g. `LIST`; odd sizes get their pad byte. */
  readonly extraChunks?: ReadonlyArray<{ readonly id: string; readonly size: number }>
  /** A 40-byte WAVE_FORMAT_EXTENSIBLE fmt chunk instead of the 16-byte PCM one. */
  readonly extensible?: boolean
  /** The size written in the data chunk header, when it differs from `dataBytes`. */
  readonly declaredDataBytes?: number
}

const chunk = (id: string, body: Buffer) => {
  const header = Buffer.alloc(8)
  header.write(id, 0, "ascii")
  header.writeUInt32LE(body.length, 4)
  return Buffer.concat([header, body, Buffer.alloc(body.length % 2)])
}

const wav = (layout: WavLayout) => {
  const channels = layout.channels ?? 1
  const sampleRate = layout.sampleRate ?? 8000
  const bits = layout.bitsPerSample ?? 16
  const fmt = Buffer.alloc(layout.extensible ? 40 : 16)
  fmt.writeUInt16LE(layout.extensible ? 0xfffe : 1, 0)
  fmt.writeUInt16LE(channels, 2)
  fmt.writeUInt32LE(sampleRate, 4)
  fmt.writeUInt32LE((sampleRate * channels * bits) / 8, 8)
  fmt.writeUInt16LE((channels * bits) / 8, 12)
  fmt.writeUInt16LE(bits, 14)
  const data = chunk("data", Buffer.alloc(layout.dataBytes, 1))
  if (layout.declaredDataBytes !== undefined) data.writeUInt32LE(layout.declaredDataBytes, 4)
  const body = Buffer.concat([
    Buffer.from("WAVE", "ascii"),
    chunk("fmt ", fmt),
    ...(layout.extraChunks ?? []).map((extra) => chunk(extra.id, Buffer.alloc(extra.size, 7))),
    data
  ])
  const riff = Buffer.alloc(8)
  riff.write("RIFF", 0, "ascii")
  riff.writeUInt32LE(body.length, 4)
  return Buffer.concat([riff, body])
}

const message = (data: unknown, taskId = "meeting-1") =>
  new TaskMessage({
    taskId: taskId as never,
    data: data as never,
    priority: 5 as never,
    attempt: 1,
    enqueuedAt: 0
  })

const run = (data: unknown) => Effect.flatMap(Pipeline, (pipeline) => pipeline.run(message(data)))

/** Writes files into a fresh temporary directory; returns their paths by name. */
const files = (contents: Record<string, Uint8Array | string>) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped()
    const paths: Record<string, string> = {}
    for (const [name, content] of Object.entries(contents)) {
      paths[name] = `${dir}/${name}`
      yield* typeof content === "string"
        ? fs.writeFileString(paths[name]!, content)
        : fs.writeFile(paths[name]!, content)
    }
    return { dir, paths }
  })

const PipelineLive = MeetingPipeline.layer.pipe(Layer.provideMerge(NodeFileSystem.layer))

describe("MeetingPipeline", () => {
  it.effect("summarizes the shipped samples (paths relative to the working directory)", () =>
    Effect.gen(function* () {
      const summary = yield* run({
        audio_files: ["samples/standup.wav", "samples/weekly-sync.wav"],
        meeting_type: "weekly_sync"
      })
      expect(summary).toEqual({
        meeting_type: "weekly_sync",
        files: [
          { path: "samples/standup.wav", duration_seconds: 1.5, channels: 1, sample_rate: 8000 },
          { path: "samples/weekly-sync.wav", duration_seconds: 2, channels: 1, sample_rate: 8000 }
        ],
        total_duration_seconds: 3.5
      })
      const fs = yield* FileSystem.FileSystem
      for (const sample of ["samples/standup.wav", "samples/weekly-sync.wav"]) {
        expect(Number((yield* fs.stat(sample)).size)).toBeLessThan(100 * 1024)
      }
    }).pipe(Effect.provide(PipelineLive))
  )

  it.scoped(
    "reads stereo 24-bit, extensible fmt, chunks before data, odd pad bytes and unset data sizes",
    () =>
      Effect.gen(function* () {
        const { paths } = yield* files({
          "stereo.wav": wav({
            channels: 2,
            sampleRate: 44_100,
            bitsPerSample: 24,
            dataBytes: 44_100 * 2 * 3 * 2,
            extraChunks: [
              { id: "LIST", size: 27 },
              { id: "junk", size: 4 }
            ]
          }),
          "extensible.wav": wav({
            extensible: true,
            channels: 6,
            sampleRate: 48_000,
            dataBytes: 48_000 * 12
          }),
          "streamed.wav": wav({ sampleRate: 16_000, dataBytes: 8_000, declaredDataBytes: 0xffffffff })
        })
        const summary = yield* run({
          audio_files: [paths["stereo.wav"], paths["extensible.wav"], paths["streamed.wav"]],
          meeting_type: "board"
        })
        expect(summary).toMatchObject({
          files: [
            { duration_seconds: 2, channels: 2, sample_rate: 44_100 },
            { duration_seconds: 1, channels: 6, sample_rate: 48_000 },
            { duration_seconds: 0.25, channels: 1, sample_rate: 16_000 }
          ],
          total_duration_seconds: 3.25
        })
      }).pipe(Effect.provide(PipelineLive))
  )

  it.scoped(
    "a missing file, a directory, a non-WAV or a broken WAV is a permanent failure that names it",
    () =>
      Effect.gen(function* () {
        const { dir, paths } = yield* files({
          "notes.txt": "minutes of the meeting",
          "riff-avi.wav": Buffer.concat([Buffer.from("RIFF\u0004\u0000\u0000\u0000AVI ", "latin1")]),
          "no-data.wav": wav({ dataBytes: 10 }).subarray(0, 36),
          "short.wav": Buffer.from("RIF")
        })
        const cases: Array<[string, string]> = [
          [`${dir}/absent.wav`, `UnrecoverableError: audio file not found: ${dir}/absent.wav`],
          [dir, `UnrecoverableError: not a file: ${dir}`],
          [paths["notes.txt"]!, `UnrecoverableError: not a WAV file: ${paths["notes.txt"]} (no RIFF header)`],
          [paths["short.wav"]!, `UnrecoverableError: not a WAV file: ${paths["short.wav"]} (no RIFF header)`],
          [
            paths["riff-avi.wav"]!,
            `UnrecoverableError: not a WAV file: ${paths["riff-avi.wav"]} (RIFF, but not WAVE)`
          ],
          [
            paths["no-data.wav"]!,
            `UnrecoverableError: not a WAV file: ${paths["no-data.wav"]} (no data chunk)`
          ]
        ]
        for (const [path, expected] of cases) {
          const result = yield* Effect.either(
            run({ audio_files: ["samples/standup.wav", path], meeting_type: "x" })
          )
          expect(
            Either.isLeft(result) && { message: result.left.message, permanent: result.left.permanent }
          ).toEqual({
            message: expected,
            permanent: true
          })
        }
      }).pipe(Effect.provide(PipelineLive))
  )

  it.effect("data that is not a meeting task is a permanent failure", () =>
    Effect.gen(function* () {
      for (const data of [
        { audio_files: [], meeting_type: "x" },
        { audio_files: ["a.wav"] },
        "meeting.wav"
      ]) {
        const result = yield* Effect.either(run(data))
        expect(Either.isLeft(result) && result.left.permanent).toBe(true)
        expect(Either.isLeft(result) && result.left.message).toMatch(/^invalid task data: /)
      }
    }).pipe(Effect.provide(PipelineLive))
  )

  it.effect("any other read error (here: permission denied) is an ordinary failure, retried", () =>
    Effect.gen(function* () {
      const result = yield* Effect.either(run({ audio_files: ["locked.wav"], meeting_type: "x" }))
      expect(
        Either.isLeft(result) && { message: result.left.message, permanent: result.left.permanent }
      ).toEqual({
        message:
          "AudioUnreadable: cannot read audio file locked.wav: PermissionDenied: FileSystem.stat (locked.wav): denied",
        permanent: false
      })
    }).pipe(
      Effect.provide(
        MeetingPipeline.layer.pipe(
          Layer.provide(
            FileSystem.layerNoop({
              stat: (path) =>
                Effect.fail(
                  new SystemError({
                    reason: "PermissionDenied",
                    module: "FileSystem",
                    method: "stat",
                    pathOrDescriptor: path,
                    description: "denied"
                  })
                )
            })
          )
        )
      )
    )
  )

  it.live("through a worker: the summary is recorded on the task; a missing file is FAILED at once", () =>
    Effect.gen(function* () {
      const queue = yield* QueueManager
      const store = yield* TaskStore
      yield* queue.push("standup", { audio_files: ["samples/standup.wav"], meeting_type: "standup" })
      yield* queue.push("ghost", { audio_files: ["samples/ghost.wav"], meeting_type: "standup" })
      yield* TaskWorker.start
      const finished = (id: string) =>
        store.get(id).pipe(
          Effect.flatten,
          Effect.filterOrFail((record) => record.status === "COMPLETED" || record.status === "FAILED"),
          Effect.retry({ schedule: Schedule.spaced("10 millis"), times: 500 })
        )
      expect(yield* finished("standup")).toMatchObject({
        status: "COMPLETED",
        result: { meeting_type: "standup", total_duration_seconds: 1.5 }
      })
      expect(yield* finished("ghost")).toMatchObject({
        status: "FAILED",
        attempts: 1,
        error: "UnrecoverableError: audio file not found: samples/ghost.wav"
      })
      expect((yield* queue.deadLetters()).map((letter) => letter.taskId)).toEqual(["ghost"])
    }).pipe(
      Effect.scoped,
      Effect.provide(Logger.remove(Logger.defaultLogger)),
      Effect.provide(
        TaskWorker.layer({ concurrency: 2 }).pipe(
          Layer.provideMerge(Layer.mergeAll(MemoryQueue.layer(), MemoryTaskStore.layer(), PipelineLive))
        )
      )
    )
  )
})
