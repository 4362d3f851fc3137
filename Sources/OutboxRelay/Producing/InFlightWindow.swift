/// Bookkeeping for rows between claim and DELETE: a pure struct, no I/O.
///
/// A row enters when it is produced and leaves when its DELETE has run (or its delivery failed).
/// The window is bounded in rows and bytes, well under librdkafka's queue limits, so the
/// producer's QUEUE_FULL never has to be handled as an error and memory is bounded by the
/// window, not by the backlog.
public struct InFlightWindow: Sendable {
    public struct Entry: Sendable, Equatable {
        public let rowId: Int64
        public let shard: Int32
        public let bytes: Int
        public let createdAtMicros: Int64
        /// When its COMMIT → acknowledgement latency starts at the latest (database clock, µs), for
        /// the claim pacer; `Int64.min`: not a sample (see Relay.pathStart).
        public let pathStartMicros: Int64
        /// Claimed after a busy poll's pause (true) or a notified wait (false): the wait its
        /// latency steers (ClaimPacer), as it was when the row was claimed, not when acknowledged.
        public let claimedPolling: Bool
        public var acknowledged: Bool
        /// The row as produced (kept for retry holds, dead-lettering and the dead-letter topic;
        /// the message buffer is shared, not copied).
        public var row: ClaimedRow?

        public static func == (a: Entry, b: Entry) -> Bool {
            a.rowId == b.rowId && a.shard == b.shard && a.bytes == b.bytes && a.acknowledged == b.acknowledged
        }
    }

    public let maxRows: Int
    public let maxBytes: Int
    public private(set) var rows = 0
    public private(set) var bytes = 0
    /// Rows produced whose delivery report has not arrived yet.
    public private(set) var awaitingReport = 0
    /// Rows in the window per shard (index = shard; grown on demand).
    private var perShard: [Int] = []
    /// Shards with rows in the window and how many (built on demand for lease planning).
    public var byShard: [Int32: Int] {
        var d: [Int32: Int] = [:]
        for (shard, n) in perShard.enumerated() where n > 0 { d[Int32(shard)] = n }
        return d
    }
    /// Rows of `shard` in the window.
    public func inFlight(shard: Int32) -> Int { Int(shard) < perShard.count ? perShard[Int(shard)] : 0 }
    /// The highest row id ever admitted: an upper bound of the ids in the window (claims
    /// reading above it need no exclusions).
    public private(set) var highestRowId: Int64 = .min
    fileprivate var entries: SequenceTable<Entry>
    private var nextSequence: UInt64 = 1

    public init(maxRows: Int, maxBytes: Int) {
        precondition(maxRows > 0 && maxBytes > 0)
        self.maxRows = maxRows
        self.maxBytes = maxBytes
        self.entries = SequenceTable(minimumCapacity: min(maxRows, 1 << 16))
    }

    /// Rows that may be claimed now.
    public var rowRoom: Int { room().rows }
    /// Bytes that still fit.
    public var byteRoom: Int { room().bytes }

    /// Rows and bytes that still fit once `reservingRows` and `reservingBytes` are admitted too
    /// (no rows once the bytes are used up).
    private func room(reservingRows: Int = 0, reservingBytes: Int = 0) -> (rows: Int, bytes: Int) {
        let bytesLeft = max(0, maxBytes - bytes - reservingBytes)
        return (bytesLeft == 0 ? 0 : max(0, maxRows - rows - reservingRows), bytesLeft)
    }

    /// Rows the next claim may read so that the byte budget — not the backlog — bounds memory:
    /// `byteRoom` over the average size of recently claimed rows, at most `batchSize` and the
    /// row room, at least 1. Before any row was seen (sizes unknown) a claim reads at most
    /// `coldStartRows`. A sudden switch from small to large rows can still overshoot once, by at
    /// most the claim's row count × the large size; the next claim adapts. `reservingRows` and
    /// `reservingBytes` are taken off the room first (a batch about to be admitted).
    public func claimLimit(batchSize: Int, averageRowBytes: Double?, coldStartRows: Int = 32,
                           reservingRows: Int = 0, reservingBytes: Int = 0) -> Int {
        let left = room(reservingRows: reservingRows, reservingBytes: reservingBytes)
        let byRows = min(batchSize, left.rows)
        guard let average = averageRowBytes, average > 0 else { return max(1, min(byRows, coldStartRows)) }
        return max(1, min(byRows, Int(Double(left.bytes) / average)))
    }
    public var isEmpty: Bool { rows == 0 }
    /// The sequence the next admitted row gets: every row in the window now has a lower one.
    public var nextSequenceNumber: UInt64 { nextSequence }

    /// Admits a row about to be produced; returns the opaque sequence for its message.
    /// A single row larger than the byte limit is still admitted when the window is empty.
    public mutating func admit(rowId: Int64, shard: Int32, bytes size: Int, createdAtMicros: Int64,
                               pathStartMicros: Int64 = .min, claimedPolling: Bool = false,
                               row: ClaimedRow? = nil) -> UInt64 {
        let seq = nextSequence
        nextSequence += 1
        if rowId > highestRowId { highestRowId = rowId }
        entries.insert(seq, Entry(rowId: rowId, shard: shard, bytes: size, createdAtMicros: createdAtMicros,
                                   pathStartMicros: pathStartMicros, claimedPolling: claimedPolling, acknowledged: false,
                                   row: row))
        rows += 1
        bytes += size
        awaitingReport += 1
        let i = Int(shard)
        if i >= perShard.count { perShard.append(contentsOf: repeatElement(0, count: i + 1 - perShard.count)) }
        perShard[i] += 1
        return seq
    }

    /// A message could not be handed to librdkafka after all: forget it.
    public mutating func cancel(_ seq: UInt64) {
        guard let e = entries[seq] else { return }
        if !e.acknowledged { awaitingReport -= 1 }
        remove(seq, e)
    }

    /// A successful delivery report: the row now waits for its DELETE.
    public mutating func acknowledge(_ seq: UInt64) -> Entry? {
        var acknowledged: Entry?
        entries.update(seq) { e in
            guard !e.acknowledged else { return }
            e.acknowledged = true
            acknowledged = e
        }
        if acknowledged != nil { awaitingReport -= 1 }
        return acknowledged
    }

    /// A failed delivery report: the row leaves the window and stays in the outbox.
    public mutating func fail(_ seq: UInt64) -> Entry? {
        guard let e = entries[seq], !e.acknowledged else { return nil }
        awaitingReport -= 1
        remove(seq, e)
        return e
    }

    /// The row's DELETE has run (whether or not the lease check let it delete the row).
    public mutating func settle(_ seq: UInt64) {
        guard let e = entries[seq], e.acknowledged else { return }
        remove(seq, e)
    }

    private mutating func remove(_ seq: UInt64, _ e: Entry) {
        entries.remove(seq)
        rows -= 1
        bytes -= e.bytes
        perShard[Int(e.shard)] -= 1
    }

    /// Every row still awaiting its report leaves the window (the producer that held them is
    /// gone); returns them. Acknowledged rows stay for their DELETE.
    public mutating func failAllUnreported() -> [Entry] {
        let unreported = entries.entries.filter { !$0.value.acknowledged }
        for (seq, e) in unreported {
            awaitingReport -= 1
            remove(seq, e)
        }
        return unreported.map(\.value).sorted { $0.rowId < $1.rowId }
    }

    /// Rows produced whose delivery report has not arrived yet.
    public var unreported: [Entry] { entries.allValues.filter { !$0.acknowledged } }

    /// Ids of every row in the window (claims must not read them again).
    public var rowIds: [Int64] { entries.allValues.map(\.rowId) }
}

extension InFlightWindow {
    /// The entry for an opaque sequence, if still in the window.
    public func entry(_ seq: UInt64) -> Entry? { entries[seq] }

    /// Whether any row in the window has a sequence below `bound` (a scan of the window).
    public func holdsSequence(below bound: UInt64) -> Bool { entries.entries.contains { $0.key < bound } }
}
