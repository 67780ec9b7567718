/**
 * Summarises a `.cpuprofile` (from `programs/bench.ts --profile <dir>`, or `node --cpu-prof`):
 * self time by category (Effect runtime, tracing, Schema, ioredis, socket I/O, GC, idle, ...),
 * by package or file, the top functions, and the inclusive time of our own functions. Locations in our TypeScript sources are mapped back
 * through tsx's cache of transpiled modules when it is there (it is, right after a run).
 *
 *   npx tsx programs/bench/ProfileSummary.ts /tmp/prof/redis-worker.c16-r1.cpuprofile [top]
 *
 * @since 0.1.0
 */
import { readdirSync, readFileSync, statSync } from "node:fs"
import { SourceMap } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
  readonly columnNumber: number
}

interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: ReadonlyArray<number>
}

interface Profile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

/** Source maps of the newest transpiled version of each module in tsx's cache, by file URL. */
const tsxSourceMaps = (): Map<string, SourceMap> => {
  const maps = new Map<string, SourceMap>()
  const uid = process.getuid?.() ?? 0
  const dir = join(tmpdir(), `tsx-${uid}`)
  let files: Array<{ readonly path: string; readonly mtime: number }> = []
  try {
    files = readdirSync(dir)
      .filter((f) => !f.endsWith(".pipe"))
      .map((f) => ({ path: join(dir, f), mtime: statSync(join(dir, f)).mtimeMs }))
      .sort((a, b) => a.mtime - b.mtime)
  } catch {
    return maps
  }
  for (const { path } of files) {
    try {
      const entry = JSON.parse(readFileSync(path, "utf8")) as { map?: { sources?: Array<string> } }
      const source = entry.map?.sources?.[0]
      if (source !== undefined) maps.set(`file://${source}`, new SourceMap(entry.map as never))
    } catch {
      // Not a cache entry of the kind we read.
    }
  }
  return maps
}

const shortUrl = (url: string) =>
  url.replace(/.*node_modules\//, "nm/").replace(new RegExp(`^file://${process.cwd()}/`), "")

/** Self-time categories, first match wins. */
const categories: ReadonlyArray<readonly [string, RegExp]> = [
  ["idle", /^\(idle\)/],
  ["bench harness (RSS sampling)", /^rss$/],
  ["GC", /^\(garbage collector\)/],
  [
    "Effect tracing (spans, Effect.fn call-site traces)",
    /tracer\.js|addSpanStackTrace|unsafeMakeSpan|NativeSpan|defineLength|nm\/effect\/dist\/esm\/Effect\.js:10[78]\d\d/
  ],
  ["Schema (validation, JSON encode/decode)", /ParseResult|Schema\.js|SchemaAST|src\/Task\.ts/],
  ["Effect runtime (fibers, context, other)", /nm\/effect\//],
  [
    "socket I/O (syscalls, streams)",
    /writeUtf8String|writev|writeBuffer|stream_base_commons|node:net|createWriteWrap|writeGeneric|onStreamRead|node:internal\/streams/
  ],
  [
    "ioredis (command build, reply parse)",
    /nm\/(ioredis|redis-parser|standard-as-callback|cluster-key-slot|denque)\//
  ],
  ["amqplib", /nm\/amqplib\//],
  ["peer library (bullmq, bee-queue, redis v3)", /nm\/(bullmq|bee-queue|redis|msgpackr)\//],
  [
    "module loading (tsx, start-up)",
    /modules\/esm|modules\/cjs|cjs-module-lexer|source_map|compileSourceTextModule|wrapSafe|internalModuleStat/
  ],
  ["our library (src/, layers/)", /(^|\s)(src|layers)\//],
  ["bench harness (programs/)", /(^|\s)programs\//]
]

/** Prints the summary of one profile. */
export const summarise = (file: string, top = 30): string => {
  const profile = JSON.parse(readFileSync(file, "utf8")) as Profile
  const maps = tsxSourceMaps()
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]))
  const label = (node: ProfileNode) => {
    const frame = node.callFrame
    const name = frame.functionName || "(anonymous)"
    const entry = maps.get(frame.url)?.findEntry(frame.lineNumber, frame.columnNumber)
    const line =
      entry !== undefined && "originalLine" in entry ? entry.originalLine + 1 : frame.lineNumber + 1
    return frame.url === "" ? name : `${name} ${shortUrl(frame.url)}:${line}`
  }
  const selfTime = new Map<number, number>()
  profile.samples.forEach((id, i) => {
    selfTime.set(id, (selfTime.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
  })
  let total = 0
  const byFunction = new Map<string, number>()
  const byFile = new Map<string, number>()
  const byCategory = new Map<string, number>()
  for (const [id, micros] of selfTime) {
    const node = nodes.get(id)!
    total += micros
    const key = label(node)
    byFunction.set(key, (byFunction.get(key) ?? 0) + micros)
    const file = shortUrl(node.callFrame.url).replace(/^(nm\/(@[^/]+\/)?[^/]+).*/, "$1") || "(native)"
    byFile.set(file, (byFile.get(file) ?? 0) + micros)
    const category = categories.find(([, pattern]) => pattern.test(key))?.[0] ?? `other (${file})`
    byCategory.set(category, (byCategory.get(category) ?? 0) + micros)
  }
  // Inclusive time of our own functions: each sample counts once for every distinct function of
  // src/ or layers/ on its stack, so a caller shows what it costs with all it calls.
  const parents = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id)
  const ours = (node: ProfileNode) => /^(src|layers)\//.test(shortUrl(node.callFrame.url))
  const inclusive = new Map<string, number>()
  for (const [id, micros] of selfTime) {
    const seen = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parents.get(at)) {
      const node = nodes.get(at)!
      if (!ours(node)) continue
      const key = label(node)
      if (seen.has(key)) continue
      seen.add(key)
      inclusive.set(key, (inclusive.get(key) ?? 0) + micros)
    }
  }
  const lines = (map: Map<string, number>, count: number) =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(
        ([key, micros]) =>
          `${((100 * micros) / total).toFixed(1).padStart(5)}% ${(micros / 1000).toFixed(0).padStart(7)} ms  ${key}`
      )
      .join("\n")
  return [
    `${file}: ${(total / 1000).toFixed(0)} ms sampled`,
    "--- self time by category",
    lines(byCategory, 20),
    "--- self time by package or file",
    lines(byFile, 15),
    "--- self time by function",
    lines(byFunction, top),
    "--- inclusive time of our functions (src/, layers/: with everything they call)",
    lines(inclusive, top)
  ].join("\n")
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [file, top] = process.argv.slice(2)
  if (file === undefined) {
    process.stderr.write("usage: npx tsx programs/bench/ProfileSummary.ts <file.cpuprofile> [top]\n")
    process.exit(2)
  }
  process.stdout.write(`${summarise(file, top === undefined ? 30 : Number(top))}\n`)
}
