/**
 * The sample pipeline for the original module's meeting tasks, `{ audio_files, meeting_type }`:
 * checks each audio file, reads its WAV header (RIFF/WAVE, `fmt ` and `data` chunks) for its
 * duration, channels and sample rate, and returns a summary recorded on the task:
 *
 * ```json
 * { "meeting_type": "standup", "total_duration_seconds": 3.5,
 *   "files": [{ "path": "samples/standup.wav", "duration_seconds": 1.5, "channels": 1, "sample_rate": 8000 }] }
 * ```
 *
 * Paths are relative to the worker's working directory. A missing file or one that is not a WAV
 * fails the task with `UnrecoverableError` (no retry would help); any other read error is an
 * ordinary, retried failure. Needs a `FileSystem` (`NodeFileSystem.layer`).
 *
 * @since 0.1.0
 */

import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import { Data, Effect, type Layer, Option, Schema } from "effect"
import * as Pipeline from "../src/Pipeline.js"

/** The data of a meeting task. */
export const MeetingTask = Schema.Struct({
  audio_files: Schema.NonEmptyArray(Schema.String.pipe(Schema.minLength(1))),
  meeting_type: Schema.String.pipe(Schema.minLength(1))
})

/** A decoded meeting task. */
export type MeetingTask = typeof MeetingTask.Type

/** What the header of one WAV file says. */
export interface AudioInfo {
  readonly path: string
  readonly duration_seconds: number
  readonly channels: number
  readonly sample_rate: number
}

/** The result of a meeting task. */
export interface MeetingSummary {
  readonly meeting_type: string
  readonly files: ReadonlyArray<AudioInfo>
  readonly total_duration_seconds: number
}

/** An audio file could not be read for a reason that may pass (not a missing file, not a bad format): retried. */
export class AudioUnreadable extends Data.TaggedError("AudioUnreadable")<{
  readonly path: string
  readonly message: string
}> {}

const unrecoverable = (message: string) => new Pipeline.UnrecoverableError({ message })

const fromPlatform = (path: string) => (error: PlatformError) =>
  error._tag === "SystemError" && error.reason === "NotFound"
    ? unrecoverable(`audio file not found: ${path}`)
    : new AudioUnreadable({ path, message: `cannot read audio file ${path}: ${error.message}` })

/** Rounds seconds to the millisecond. */
const seconds = (value: number) => Math.round(value * 1000) / 1000

/** Chunks looked at before giving up on finding `fmt ` and `data`. */
const maxChunks = 64

/** Step 1: the file exists and is a regular file. */
export const checkFile = Effect.fn("MeetingPipeline.checkFile")(function* (path: string) {
  const fs = yield* FileSystem.FileSystem
  const info = yield* fs.stat(path).pipe(Effect.mapError(fromPlatform(path)))
  if (info.type !== "File") return yield* unrecoverable(`not a file: ${path}`)
})

/** Step 2: the duration, channels and sample rate from the file's WAV header. */
export const readWavHeader = Effect.fn("MeetingPipeline.readWavHeader")(function* (path: string) {
  const fs = yield* FileSystem.FileSystem
  const notWav = (why: string) => unrecoverable(`not a WAV file: ${path} (${why})`)
  return yield* Effect.scoped(
    Effect.gen(function* () {
      const file = yield* fs.open(path, { flag: "r" })
      const size = Number((yield* file.stat).size)
      /** Exactly `length` bytes at `offset`, or `None` past the end of the file. */
      const readAt = (offset: number, length: number) =>
        Effect.gen(function* () {
          if (offset + length > size) return Option.none<Buffer>()
          yield* file.seek(offset, "start")
          const bytes = yield* file.readAlloc(length)
          return Option.filter(
            Option.map(bytes, (b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)),
            (b) => b.length === length
          )
        })
      const riff = yield* readAt(0, 12)
      if (Option.isNone(riff) || riff.value.toString("ascii", 0, 4) !== "RIFF") {
        return yield* notWav("no RIFF header")
      }
      if (riff.value.toString("ascii", 8, 12) !== "WAVE") return yield* notWav("RIFF, but not WAVE")
      let format: { channels: number; sampleRate: number; byteRate: number } | undefined
      let offset = 12
      for (let chunk = 0; chunk < maxChunks; chunk++) {
        const header = yield* readAt(offset, 8)
        if (Option.isNone(header)) break
        const id = header.value.toString("ascii", 0, 4)
        const length = header.value.readUInt32LE(4)
        if (id === "fmt ") {
          const body = yield* readAt(offset + 8, 16)
          if (Option.isNone(body)) return yield* notWav("truncated fmt chunk")
          format = {
            channels: body.value.readUInt16LE(2),
            sampleRate: body.value.readUInt32LE(4),
            byteRate: body.value.readUInt32LE(8)
          }
          if (format.channels === 0 || format.sampleRate === 0 || format.byteRate === 0) {
            return yield* notWav("fmt chunk with zero channels, sample rate or byte rate")
          }
        } else if (id === "data") {
          if (format === undefined) return yield* notWav("data chunk before the fmt chunk")
          // Streamed WAVs may leave the size unset (0 or 0xFFFFFFFF): count what the file holds.
          const available = size - offset - 8
          const dataBytes = length === 0 || length > available ? available : length
          return {
            path,
            duration_seconds: seconds(dataBytes / format.byteRate),
            channels: format.channels,
            sample_rate: format.sampleRate
          } satisfies AudioInfo
        }
        offset += 8 + length + (length % 2)
      }
      return yield* notWav(format === undefined ? "no fmt chunk" : "no data chunk")
    })
  ).pipe(Effect.catchTag("BadArgument", "SystemError", (error) => Effect.fail(fromPlatform(path)(error))))
})

/** Step 3: the summary of the meeting from its files. */
export const summarize = (meetingType: string, files: ReadonlyArray<AudioInfo>): MeetingSummary => ({
  meeting_type: meetingType,
  files,
  total_duration_seconds: seconds(files.reduce((total, file) => total + file.duration_seconds, 0))
})

/** The meeting pipeline: check and read every file (four at a time), then summarize. */
export const meetingPipeline = Pipeline.make({
  name: "meeting",
  schema: MeetingTask,
  run: (task: MeetingTask) =>
    Effect.forEach(task.audio_files, (path) => Effect.zipRight(checkFile(path), readWavHeader(path)), {
      concurrency: 4
    }).pipe(Effect.map((files) => summarize(task.meeting_type, files)))
})

/** The meeting pipeline as the `Pipeline` service; provide a `FileSystem` (`NodeFileSystem.layer`). */
export const layer: Layer.Layer<Pipeline.Pipeline, never, FileSystem.FileSystem> =
  Pipeline.Pipeline.layer(meetingPipeline)
