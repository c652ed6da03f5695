/**
 * The event log of a recorded run: its format (event-format.ts, SPEC.md §Determinism and the
 * event log), where a recording writes it (event-sink.ts) and how a replay reads it, whole or as
 * it grows (event-source.ts).
 */
export * from './event-format.js'
export { FileEventSink, MemoryEventSink, type EventSink, type FileSinkOptions } from './event-sink.js'
export { EventSource, followEventLog, type FollowOptions } from './event-source.js'
import { MemoryEventSink, type EventSink } from './event-sink.js'
import { EventSource } from './event-source.js'

/** the recording side as the machine names it: any sink; `new EventRecorder(header)` keeps the log in memory */
export type EventRecorder = EventSink
export const EventRecorder = MemoryEventSink
/** the replay side as the machine names it (`EventReplayer.open(file, memoryBytes, imageSha)` reads a whole log) */
export const EventReplayer = EventSource
export type EventReplayer = EventSource
