/// Decides which id range the next claim reads, so that no committed row is ever skipped.
///
/// A plain "last id seen" cursor skips a row whose transaction commits after rows with higher
/// ids were read. This cursor keeps two marks:
/// - `cursor`: the highest id claimed; forward reads start here (the cheap, common case);
/// - `floor`: every row with `id <= floor` is known to be claimed or gone for good.
///
/// After each read the snapshot's `xmax` is recorded with the cursor as a checkpoint. Because
/// the table's `id` default only draws from the sequence once the inserting transaction has an
/// xid, a row with an id at or below the checkpoint that was invisible must belong to a
/// transaction in that snapshot's in-progress list. Once a later snapshot's `xmin` reaches the
/// checkpoint's `xmax`, all those transactions have ended: one *sweep* read from `floor`
/// (excluding rows in flight) then picks up any late row and lets `floor` advance. Sweeps are
/// rate-limited; a late row therefore waits at most about one sweep interval after its commit.
///
/// Pure state: no I/O, tested directly.
public struct ClaimCursor: Sendable, Equatable {
    public private(set) var floor: Int64 = 0
    public private(set) var cursor: Int64 = 0
    /// Checkpoints (cursor at read, snapshot xmax), ascending.
    private var checkpoints: [Checkpoint] = []
    /// Highest id known to be settled (ripe) but not yet swept.
    public private(set) var ripeTarget: Int64 = 0
    /// A sweep is owed right away (a fresh start, a row was rewound, or the shard set grew).
    public private(set) var sweepForced = true
    private var lastSweepAt: Double = -.infinity
    /// Bumped by every rewind/reset. A read requested before a rewind must not move the floor
    /// back above the rewound row (the relay awaits the read, and a failure can arrive meanwhile).
    public private(set) var generation = 0

    struct Checkpoint: Sendable, Equatable {
        let upTo: Int64
        let xmax: UInt64
    }

    public enum Mode: Sendable, Equatable { case forward, sweep }

    /// What to read next.
    public struct Request: Sendable, Equatable {
        public let mode: Mode
        /// Read rows with `id > lowerBound` …
        public let lowerBound: Int64
        /// … except these (rows in flight or awaiting their DELETE).
        public let excluded: [Int64]
        public let limit: Int
        /// The cursor's generation when the request was made.
        public var generation = 0
    }

    /// The outcome of a claim read.
    public struct Observation: Sendable {
        public let snapshotXmin: UInt64
        public let snapshotXmax: UInt64
        public let lastRowId: Int64?
        public let rowCount: Int

        public init(snapshotXmin: UInt64, snapshotXmax: UInt64, lastRowId: Int64?, rowCount: Int) {
            self.snapshotXmin = snapshotXmin
            self.snapshotXmax = snapshotXmax
            self.lastRowId = lastRowId
            self.rowCount = rowCount
        }
    }

    public init() {}

    /// What to read next; `now` is seconds on a monotonic clock.
    /// - Parameters:
    ///   - inFlight: ids of rows in flight (any order); only read when some may lie above the
    ///     read's lower bound, so a forward read past `inFlightAtMost` walks nothing.
    ///   - inFlightAtMost: an upper bound of those ids.
    public func nextRequest(limit: Int, inFlight: @autoclosure () -> [Int64], inFlightAtMost: Int64 = .max,
                            now: Double, sweepInterval: Double) -> Request {
        let sweep = sweepForced || (ripeTarget > floor && now - lastSweepAt >= sweepInterval)
        let lower = sweep ? floor : cursor
        let excluded = inFlightAtMost <= lower ? [] : inFlight().filter { $0 > lower }.sorted()
        var request = Request(mode: sweep ? .sweep : .forward, lowerBound: lower, excluded: excluded, limit: limit)
        request.generation = generation
        return request
    }

    /// Records what a read returned.
    public mutating func observe(_ request: Request, _ result: Observation, now: Double) {
        let truncated = result.rowCount >= request.limit
        let cursorBefore = cursor
        if let last = result.lastRowId { cursor = max(cursor, last) }
        if request.generation != generation {
            // Rewound while this read was in flight: keep the lowered floor and sweep again.
            sweepForced = true
            return
        }
        if request.mode == .forward, result.snapshotXmin == result.snapshotXmax, floor >= request.lowerBound {
            // No transaction was in progress and everything up to where this read started was
            // settled: so is what it covered. A row committed later gets its id only after its
            // transaction has an xid, hence above every id visible here. (A backlog drain thus
            // needs no sweeps at all.)
            floor = cursor
            ripeTarget = max(ripeTarget, floor)
        }
        if request.mode == .sweep {
            lastSweepAt = now
            // The sweep saw every visible row above the floor up to `covered`.
            let covered = truncated ? (result.lastRowId ?? request.lowerBound) : cursor
            // With no transaction in progress nothing invisible can sit below `covered`;
            // otherwise only what has ripened is settled.
            let settled = result.snapshotXmin == result.snapshotXmax ? covered : min(ripeTarget, covered)
            if settled > floor { floor = settled }
            ripeTarget = max(ripeTarget, floor)
            // Keep sweeping while the range below the previous cursor is not covered yet.
            sweepForced = truncated && (result.lastRowId ?? request.lowerBound) < cursorBefore
        }
        // Ripen checkpoints whose in-progress transactions have all ended by this snapshot.
        var ripe: Int64?
        while let first = checkpoints.first, first.xmax <= result.snapshotXmin {
            ripe = first.upTo
            checkpoints.removeFirst()
        }
        if let ripe { ripeTarget = max(ripeTarget, ripe) }
        // Everything up to `cursor` that was visible in this snapshot has been claimed.
        if floor >= cursor {
            checkpoints.removeAll()
        } else if checkpoints.last.map({ $0.upTo < cursor || $0.xmax < result.snapshotXmax }) ?? true {
            if let last = checkpoints.last, last.xmax == result.snapshotXmax {
                checkpoints[checkpoints.count - 1] = Checkpoint(upTo: cursor, xmax: result.snapshotXmax)
            } else {
                checkpoints.append(Checkpoint(upTo: cursor, xmax: result.snapshotXmax))
            }
        }
        if checkpoints.count > 64 { checkpoints.removeFirst(checkpoints.count - 64) }
    }

    /// A row that was claimed but not delivered (failed, or its lease was not valid) must be read
    /// again: lower the floor below it and sweep.
    public mutating func rewind(below id: Int64) {
        generation += 1
        floor = min(floor, id - 1)
        ripeTarget = max(ripeTarget, floor)
        sweepForced = true
    }

    /// Start over (the set of shards grew: their older rows were never read by this replica).
    public mutating func reset() {
        let next = generation + 1
        self = ClaimCursor()
        generation = next
    }
}
