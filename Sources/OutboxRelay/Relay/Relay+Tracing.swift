import Foundation
import Kafka
import Tracing

/// Tracing: one producer span per produce of a row, from the produce call to its delivery report.
///
/// The span continues the trace the application left in the row's headers (`traceparent`, or
/// whatever the configured tracer's propagator reads), and the produced message carries the
/// span's own context instead, so a consumer's span is a child of the relay's, which is a child of
/// the application's. A row produced again (a retry, a probe, a new owner) gets a new span.
/// Attributes follow OpenTelemetry's messaging conventions. With no tracer nothing here runs.
extension Relay {
    /// The message to produce for `row`; with a tracer, a copy carrying the new span's context.
    func tracedMessage(_ row: ClaimedRow, seq: UInt64) -> KafkaMessage {
        guard let tracer = configuration.tracer else { return row.message }
        var context = ServiceContext.topLevel
        tracer.extract(row.message, into: &context, using: MessageHeaderExtractor())
        let span = tracer.startSpan("send \(row.message.topic)", context: context, ofKind: .producer)
        span.attributes["messaging.system"] = "kafka"
        span.attributes["messaging.operation.type"] = "send"
        span.attributes["messaging.operation.name"] = "send"
        span.attributes["messaging.destination.name"] = row.message.topic
        span.attributes["messaging.message.id"] = "\(row.id)"
        if let key = row.message.keyBytes, let text = String(validating: key, as: UTF8.self) {
            span.attributes["messaging.kafka.message.key"] = text
        }
        span.attributes["messaging.message.body.size"] = row.message.valueBytes?.count ?? 0
        span.attributes["outbox.row_id"] = Int(row.id)
        span.attributes["outbox.shard"] = Int(row.shard)
        span.attributes["outbox.table"] = table.description
        span.attributes["outbox.replica"] = replicaId
        // Time the row waited in the outbox, commit to this produce call (wall clocks).
        let waitedMicros = wallClockMicros() + databaseClockOffsetMicros - row.createdAtMicros
        span.attributes["outbox.wait_ms"] = Double(max(0, waitedMicros)) / 1000
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: HeaderDictionaryInjector())
        var message = row.message
        for (name, value) in carrier.sorted(by: { $0.key < $1.key }) { message.replaceHeader(name: name, value: value) }
        spans[seq] = span
        return message
    }

    /// Ends the span of window sequence `seq`: acknowledged at `partition`/`offset`, or failed.
    func endSpan(_ seq: UInt64, partition: Int32? = nil, offset: Int64? = nil, error: KafkaError? = nil, outcome: String? = nil) {
        guard !spans.isEmpty, let span = spans.removeValue(forKey: seq) else { return }
        if let partition, partition >= 0 { span.attributes["messaging.destination.partition.id"] = "\(partition)" }
        if let offset { span.attributes["messaging.kafka.offset"] = Int(offset) }
        if let error {
            span.attributes["error.type"] = error.name
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error, message: "\(error.name): \(error.message)"))
        }
        if let outcome {
            span.attributes["outbox.outcome"] = outcome
            if error == nil { span.setStatus(SpanStatus(code: .error, message: outcome)) }
        }
        span.end()
    }

    /// Ends the spans of messages no longer in the window (written off by a producer re-creation),
    /// or all of them (`all`, at shutdown): their rows are read and produced again under new spans.
    func endOrphanSpans(outcome: String, all: Bool = false) {
        guard !spans.isEmpty else { return }
        for seq in Array(spans.keys) where all || window.entry(seq) == nil {
            endSpan(seq, outcome: outcome)
        }
    }
}

/// Reads trace context from a message's headers (names compared ignoring ASCII case).
struct MessageHeaderExtractor: Extractor {
    func extract(key: String, from carrier: KafkaMessage) -> String? { carrier.headerValue(named: key) }
}

/// Collects the trace context a tracer injects, to be set as message headers.
struct HeaderDictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
