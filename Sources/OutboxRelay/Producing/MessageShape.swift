import Foundation
import Kafka

/// Optional headers added to every message besides the row's own headers and `outbox-id`.
/// A header the row already carries is never overwritten (trace context such as `traceparent`
/// and `tracestate` passes through untouched).
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

    /// True when any optional header is configured.
    var isActive: Bool { createdAtHeader != nil || relayHeader != nil || cloudEventsSource != nil }

    func addHeaders(to message: inout KafkaMessage, id: Int64, topic: String, createdAtMicros: Int64, rowHeaders: [String?]) {
        if !isActive { return }
        func add(_ name: String, _ value: String) {
            if !rowHeaders.contains(name) { message.addHeader(name: name, value: value) }
        }
        if let h = createdAtHeader { add(h, Self.rfc3339(micros: createdAtMicros)) }
        if let h = relayHeader { add(h, relayName) }
        if let source = cloudEventsSource {
            add("ce_specversion", "1.0")
            add("ce_id", String(id))
            add("ce_source", source)
            add("ce_type", topic)
            add("ce_time", Self.rfc3339(micros: createdAtMicros))
        }
    }
}
