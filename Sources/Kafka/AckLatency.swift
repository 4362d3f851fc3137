import CKafka
import Glibc

/// Produce → broker acknowledgement latencies of every message the broker acknowledged, for all
/// the producers given it (a relay re-creates its producer after a fatal error; the histogram
/// goes on). Recorded on librdkafka's broker thread when the acknowledgement is handled (CKafka's
/// on_acknowledgement interceptor), so it is the acknowledgement's own time, not when the owner
/// took the report. A relay takes reports at the end of its next wait, up to a claim cycle later.
public final class AckLatency: @unchecked Sendable {
    /// Owned; freed in deinit. Written by librdkafka's threads with atomic adds, read the same way.
    let histogram: UnsafeMutablePointer<outbox_ack_latency>

    /// `keepingTimesOf`: also keep each acknowledgement's own time by the message's opaque
    /// (``acknowledgedAtMicros(opaque:)``) for up to this many messages in flight at once.
    public init(keepingTimesOf messages: Int = 0) {
        guard let h = outbox_ack_latency_new(),
              messages <= 0 || outbox_ack_latency_keep_times(h, messages) == 0 else { fatalError("out of memory") }
        histogram = h
    }

    deinit { outbox_ack_latency_free(histogram) }

    /// Bucket upper bounds in microseconds, ascending (a last bucket above them is implied).
    public static let boundsMicros: [Int64] = (0..<Int(outbox_ack_latency_bucket_count())).map {
        outbox_ack_latency_bound_us(Int32($0))
    }

    public struct Snapshot: Sendable, Equatable {
        /// Cumulative counts: `cumulative[i]` messages took at most `boundsMicros[i]`; the last
        /// entry (one more than the bounds) counts every message.
        public var cumulative: [UInt64]
        public var sumMicros: UInt64
        public var count: UInt64 { cumulative.last ?? 0 }
    }

    public func snapshot() -> Snapshot {
        var running: UInt64 = 0
        let cumulative = (0...Self.boundsMicros.count).map { i -> UInt64 in
            running += outbox_ack_latency_count(histogram, Int32(i))
            return running
        }
        return Snapshot(cumulative: cumulative, sumMicros: outbox_ack_latency_sum_us(histogram))
    }

    /// A measuring aid (the benchmark's exact COMMIT → acknowledgement per row): from now on
    /// every acknowledged message with an `outbox-id` header appends `<id> <acknowledgement time,
    /// µs since the epoch>` to `path`, written in 256 KiB pieces and when a producer closes.
    public func openLog(path: String) throws(KafkaError) {
        let e = outbox_ack_latency_open_log(histogram, path)
        if e != 0 { throw KafkaError(.configuration, message: "cannot open the acknowledgement log \"\(path)\": \(String(cString: strerror(e)))") }
    }

    /// Writes what the acknowledgement log holds (no-op without one).
    public func flushLog() { outbox_ack_latency_flush_log(histogram) }

    /// The longest produce → acknowledgement latency since the last call, in seconds; nil if no
    /// message was acknowledged since.
    public func takeRecentMax() -> Double? {
        let us = outbox_ack_latency_take_recent_max(histogram)
        return us == 0 ? nil : Double(us) / 1_000_000
    }

    /// When the broker acknowledged the message produced with `opaque`, in µs since the epoch on
    /// this host's clock; nil if times are not kept, it is not acknowledged, or so many later
    /// messages were acknowledged since that its slot was taken.
    public func acknowledgedAtMicros(opaque: UInt64) -> Int64? {
        let us = outbox_ack_latency_time_of(histogram, opaque)
        return us == 0 ? nil : Int64(us)
    }

    /// For tests: records `micros` as the interceptor does.
    public func record(micros: Int64) { outbox_ack_latency_record(histogram, micros) }

    /// Prometheus text exposition of a histogram `name` with `labels` (already rendered, e.g.
    /// `table="public.outbox"`), in seconds.
    public func prometheusText(name: String, help: String, labels: String) -> String {
        let s = snapshot()
        let sep = labels.isEmpty ? "" : ","
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (i, bound) in Self.boundsMicros.enumerated() {
            out += "\(name)_bucket{\(labels)\(sep)le=\"\(Self.seconds(bound))\"} \(s.cumulative[i])\n"
        }
        out += "\(name)_bucket{\(labels)\(sep)le=\"+Inf\"} \(s.count)\n"
        out += "\(name)_sum{\(labels)} \(Self.seconds(Int64(s.sumMicros)))\n"
        out += "\(name)_count{\(labels)} \(s.count)\n"
        return out
    }

    /// `value` escaped for a label in the Prometheus text format: backslash, double quote and line
    /// feed (a quoted table name may hold any of them).
    public static func labelValue(_ value: String) -> String {
        var out = ""
        for c in value.unicodeScalars {  // scalars: "\r\n" is one Character, its "\n" one scalar
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Microseconds as seconds in plain decimal (0.0001, 2.5, 60): exact, no exponent.
    static func seconds(_ micros: Int64) -> String {
        let whole = micros / 1_000_000
        var frac = String(micros % 1_000_000)
        frac = String(repeating: "0", count: 6 - frac.count) + frac
        while frac.hasSuffix("0") { frac.removeLast() }
        return frac.isEmpty ? "\(whole)" : "\(whole).\(frac)"
    }
}
