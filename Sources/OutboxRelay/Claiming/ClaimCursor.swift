/// Decides what the next claim reads, so that every committed row is read — once per
/// generation, as soon as its transaction's commit is visible — and never a rolled-back one.
///
/// Rows carry their top-level transaction's xid (`txid xid8 DEFAULT pg_current_xact_id()`).
/// The cursor walks **snapshot windows**, as PgQ (Skytools) builds its batches:
///
/// - a **sweep** reads every row visible in one snapshot `W` (the first page's own), in id order,
///   page by page (`id > after`), except rows already in flight. It starts every generation:
///   at start-up, when the shard set grew, after a rewind or a lost connection.
/// - then **windows**: the window after snapshot `S1` holds the rows whose transaction is visible
///   in the next read's snapshot `S2` and was not visible in `S1`, read in id order. A transaction
///   invisible in `S1` either was running below `S1.xmax` (it is in `S1.xip`) or has an xid at or
///   above `S1.xmax` (running or not yet begun — `xmax` is `latestCompletedXid + 1`, so a running
///   transaction can sit there without being listed). The first page finds them on the `txid`
///   index: `txid >= S1.xmax OR txid = ANY(S1.xip)`; a window larger than one page is read on in id
///   order with `S2` fixed (`pg_visible_in_snapshot(txid, S2) AND NOT pg_visible_in_snapshot(txid, S1)`).
///
/// Every committed transaction becomes visible between two consecutive snapshots exactly once, so
/// the windows partition the committed rows: nothing is skipped, nothing read twice, and a row is
/// read by the first claim after its commit — however long other transactions stay open. Because
/// a snapshot that sees a transaction B also sees every transaction whose commit returned before B
/// began, and ids come from a `CACHE 1` sequence (drawn in real-time order), a row is never read
/// after a same-key row that causally follows it: windows are read in order, rows in id order.
///
/// Pure state: no I/O, tested directly (including against a model of `GetSnapshotData`).
public struct ClaimCursor: Sendable, Equatable {
    public enum Phase: Sendable, Equatable {
        /// Read every row visible in `snapshot` (nil: the read's own) with `id > after`.
        case sweep(after: Int64, snapshot: PGSnapshot?)
        /// Read the rows whose transaction is visible in `snapshot` (nil: the read's own) but not
        /// in `since`, with `id > after`.
        case window(since: PGSnapshot, after: Int64, snapshot: PGSnapshot?)
    }

    public private(set) var phase: Phase = .sweep(after: 0, snapshot: nil)
    /// Bumped by every rewind/reset. A read requested before a rewind is stale: its rows are
    /// dropped (the new sweep reads them again, in order).
    public private(set) var generation = 0

    public enum Mode: Sendable, Equatable {
        /// Every visible row (page 1: in the read's own snapshot; later pages: in `snapshot`).
        case sweep
        /// The first page of a window: rows of transactions that became visible since `since`.
        case window
        /// A later page of a window: `snapshot` fixed, read on in id order.
        case windowContinued
    }

    /// What to read next.
    public struct Request: Sendable, Equatable {
        public let mode: Mode
        /// The window's lower snapshot (`.window`, `.windowContinued`).
        public let since: PGSnapshot?
        /// The snapshot fixed by the first page (later pages); nil: the read's own.
        public let snapshot: PGSnapshot?
        /// Read rows with `id > after` …
        public let after: Int64
        /// … except these (sweeps only: rows in flight from before the sweep).
        public let excluded: [Int64]
        public let limit: Int
        /// The cursor's generation when the request was made.
        public let generation: Int
    }

    public init() {}

    /// A read is owed right away (a sweep, or the next page of a window).
    public var hasMore: Bool {
        switch phase {
        case .sweep: return true
        case .window(_, _, let snapshot): return snapshot != nil
        }
    }

    /// What to read next.
    /// - Parameters:
    ///   - inFlight: ids of rows in flight (any order); read only for sweeps, and only when some
    ///     may lie above the sweep's lower bound.
    ///   - inFlightAtMost: an upper bound of those ids.
    public func nextRequest(limit: Int, inFlight: @autoclosure () -> [Int64], inFlightAtMost: Int64 = .max) -> Request {
        switch phase {
        case .sweep(let after, let snapshot):
            let excluded = inFlightAtMost <= after ? [] : inFlight().filter { $0 > after }.sorted()
            return Request(mode: .sweep, since: nil, snapshot: snapshot, after: after, excluded: excluded,
                           limit: limit, generation: generation)
        case .window(let since, let after, let snapshot):
            // A window's rows were invisible to every earlier read of this generation, so none is
            // in flight: nothing to exclude.
            return Request(mode: snapshot == nil ? .window : .windowContinued, since: since, snapshot: snapshot,
                           after: after, excluded: [], limit: limit, generation: generation)
        }
    }

    /// Records what a read returned: the snapshot it read in, its last row id, how many rows.
    public mutating func observe(_ request: Request, snapshot returned: PGSnapshot, lastRowId: Int64?, rowCount: Int) {
        // Rewound while this read was in flight: the new sweep stands.
        guard request.generation == generation else { return }
        // Later pages keep the first page's snapshot (the statement reports it back).
        let snapshot = request.snapshot ?? returned
        let truncated = rowCount >= request.limit
        switch request.mode {
        case .sweep:
            if truncated, let last = lastRowId {
                phase = .sweep(after: last, snapshot: snapshot)
            } else {
                phase = .window(since: snapshot, after: 0, snapshot: nil)
            }
        case .window, .windowContinued:
            guard let since = request.since else { preconditionFailure("a window request without its lower snapshot: \(request)") }
            if truncated, let last = lastRowId {
                phase = .window(since: since, after: last, snapshot: snapshot)
            } else {
                phase = .window(since: snapshot, after: 0, snapshot: nil)
            }
        }
    }

    /// A row that was claimed but not delivered (failed, its lease was not valid, no producer)
    /// must be read again, in order with the later rows of its key: start a new generation with
    /// a sweep of everything not in flight. Rare (failures only), so simplicity beats a narrower
    /// re-read: a sweep from the start can skip nothing.
    public mutating func rewind() {
        generation += 1
        phase = .sweep(after: 0, snapshot: nil)
    }

    /// Start over (the set of shards grew, or the connection was lost and the database may have
    /// failed over: its snapshots need not follow the old ones).
    public mutating func reset() {
        rewind()
    }
}
