import Foundation
import Kafka

/// Optional headers added to every message besides the row's own headers and `outbox-id`.
///
/// The relay's own headers win: a row header named `outbox-id`, or named like the configured
/// created-at or relay header, is dropped (a consumer de-duplicating on the first `outbox-id`
/// must never see a forged one). CloudEvents `ce_*` headers the row carries win over the relay's
/// (so producers can set `ce_type`); everything else the row carries passes through untouched
/// (trace context such as `traceparent` and `tracestate` included).
public struct MessageShape: Sendable, Equatable {
    /// Header carrying the row's `created_at` (RFC 3339, UTC, microseconds). Off when nil.
    public var createdAtHeader: String?
    /// Header carrying the relaying replica's name. Off when nil.
    public var relayHeader: String?
    /// Relay name for `relayHeader`.
    public var relayName: String = ""
    /// CloudEvents binary-mode `ce_source`; setting it turns on `ce_specversion`, `ce_id`
    /// (the row id), `ce_source`, `ce_type` (the row's `ce_type` header, else the topic) and
    /// `ce_time` (the row's `created_at`). Off when nil.
    public var cloudEventsSource: String?

    public init() {}

    static func rfc3339(micros: Int64) -> String {
        let seconds = Double(micros) / 1_000_000
        let date = Date(timeIntervalSince1970: seconds)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        let fraction = ((micros % 1_000_000) + 1_000_000) % 1_000_000
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", c.year!, c.month!, c.day!, c.hour!, c.minute!, c.second!, Int(fraction))
    }

    /// Header names the relay sets itself and a row may not: `outbox-id` and the configured
    /// created-at and relay headers, as bytes.
    var reservedHeaderNames: [[UInt8]] {
        [Array(ClaimedRow.idHeader.utf8)] + [createdAtHeader, relayHeader].compactMap { $0.map { Array($0.utf8) } }
    }

    /// True when any optional header is configured.
    var isActive: Bool { createdAtHeader != nil || relayHeader != nil || cloudEventsSource != nil }

    func addHeaders(to message: inout KafkaMessage, id: Int64, topic: String, createdAtMicros: Int64, rowHeaders: [String?]) {
        if !isActive { return }
        func add(_ name: String, _ value: String) {
            if !rowHeaders.contains(name) { message.addHeader(name: name, value: value) }
        }
        // The row's own headers of these names were dropped (reservedHeaderNames).
        if let h = createdAtHeader { message.addHeader(name: h, value: Self.rfc3339(micros: createdAtMicros)) }
        if let h = relayHeader { message.addHeader(name: h, value: relayName) }
        if let source = cloudEventsSource {
            add("ce_specversion", "1.0")
            add("ce_id", String(id))
            add("ce_source", source)
            add("ce_type", topic)
            add("ce_time", Self.rfc3339(micros: createdAtMicros))
        }
    }
}
