import OutboxRelay
import Testing

/// The claim protocol without I/O: the cursor's requests are evaluated against a model of
/// PostgreSQL's transactions and snapshots (procarray.c `GetSnapshotData`: `xmax` is
/// `latestCompletedXid + 1`, `xip` the running xids below it), with each claim statement's
/// predicate mirrored from `OutboxQueries`.
@Suite struct ClaimCursorTests {
    @Test func snapshotTextRoundTripsAndVisibilityMatchesPostgres() throws {
        let s = try #require(PGSnapshot(text: "725:730:727,725"))
        #expect(s.description == "725:730:725,727")
        #expect(s.isVisible(724))
        #expect(!s.isVisible(725))
        #expect(s.isVisible(726))
        #expect(!s.isVisible(727))
        #expect(s.isVisible(729))
        #expect(!s.isVisible(730), "xmax and above: running or not yet begun")
        #expect(PGSnapshot(text: "725:725:") == PGSnapshot(xmin: 725, xmax: 725))
        #expect(PGSnapshot(text: "9:8:") == nil)
        #expect(PGSnapshot(text: "1:2:x") == nil)
    }

    /// The claim reads the snapshot from its result's bytes: every malformed shape is refused
    /// (a claim then fails with the text named) rather than read as some other snapshot.
    @Test func theSnapshotParserRefusesWhatIsNotOne() {
        #expect(PGSnapshot(text: "18446744073709551615:18446744073709551615:")?.xmax == .max)
        #expect(PGSnapshot(text: "725:730:726,728,729")?.xip == [726, 728, 729])
        #expect(PGSnapshot(text: "725:730:")?.xip == [])
        for bad in ["", ":", "::", "1:2", "1::", ":2:", "1:2:3,", "1:2:,3", "1:2:3,,4", "1:2:3:4", "+1:2:", "1:-2:",
                    " 1:2:", "1:2: 3", "1:2:3 ", "18446744073709551616:18446744073709551616:", "1:2:99999999999999999999",
                    "x:2:", "1:2:3;4", "9:8:"] {
            #expect(PGSnapshot(text: bad) == nil, "\(bad)")
        }
        // The text form reads back as the same snapshot.
        for text in ["1:1:", "725:730:725,727", "100:200:101,150,199"] {
            #expect(PGSnapshot(text: text)?.description == text)
        }
    }

    @Test func aFreshCursorSweepsThenReadsWindows() {
        var c = ClaimCursor()
        var r = c.nextRequest(limit: 10, inFlight: [])
        #expect(r.mode == .sweep)
        #expect(r.after == 0 && r.snapshot == nil)
        let s1 = PGSnapshot(xmin: 5, xmax: 5)
        c.observe(r, snapshot: s1, lastRowId: 10, rowCount: 10)
        r = c.nextRequest(limit: 10, inFlight: Array(1...10))
        #expect(r.mode == .sweep, "a full page: the sweep goes on")
        #expect(r.after == 10 && r.snapshot == s1, "with the first page's snapshot fixed")
        #expect(r.excluded.isEmpty, "in-flight rows below the lower bound need no exclusion")
        c.observe(r, snapshot: s1, lastRowId: 14, rowCount: 4)
        #expect(!c.hasMore)
        r = c.nextRequest(limit: 10, inFlight: Array(1...14))
        #expect(r.mode == .window)
        #expect(r.since == s1 && r.snapshot == nil && r.excluded.isEmpty)
    }

    @Test func aFullWindowIsReadOnWithItsSnapshotFixed() {
        var c = ClaimCursor()
        let s0 = PGSnapshot(xmin: 5, xmax: 5), s1 = PGSnapshot(xmin: 9, xmax: 12, xip: [9])
        c.observe(c.nextRequest(limit: 10, inFlight: []), snapshot: s0, lastRowId: nil, rowCount: 0)
        var r = c.nextRequest(limit: 3, inFlight: [])
        c.observe(r, snapshot: s1, lastRowId: 40, rowCount: 3)
        #expect(c.hasMore)
        r = c.nextRequest(limit: 3, inFlight: [])
        #expect(r.mode == .windowContinued && r.since == s0 && r.snapshot == s1 && r.after == 40)
        c.observe(r, snapshot: s1, lastRowId: 41, rowCount: 1)
        r = c.nextRequest(limit: 3, inFlight: [])
        #expect(r.mode == .window && r.since == s1, "the next window starts where this one ended")
    }

    @Test func aStaleReadAfterARewindChangesNothing() {
        var c = ClaimCursor()
        c.observe(c.nextRequest(limit: 10, inFlight: []), snapshot: PGSnapshot(xmin: 5, xmax: 5), lastRowId: nil, rowCount: 0)
        let stale = c.nextRequest(limit: 10, inFlight: [])
        c.rewind()
        c.observe(stale, snapshot: PGSnapshot(xmin: 7, xmax: 7), lastRowId: 3, rowCount: 1)
        let r = c.nextRequest(limit: 10, inFlight: [1, 2, 7])
        #expect(r.mode == .sweep && r.after == 0 && r.excluded == [1, 2, 7], "the rewind's sweep stands, rows in flight excluded")
        #expect(r.generation == stale.generation + 1)
    }

    /// The sequence: A takes its xid first, B takes the next xid and draws the lower id,
    /// A commits and is relayed; B's xid is then at or above the snapshot's xmax — in no list —
    /// and B commits later. B's row must be in the very next window.
    @Test func aTransactionAtOrAboveXmaxIsInTheNextWindow() {
        var db = Model()
        var c = ClaimCursor()
        var relay = ModelRelay()
        relay.claim(&c, &db)                    // the start-up sweep: nothing yet
        let a = db.begin(), b = db.begin()
        db.assignXid(a)                         // a domain write first
        let bRow = db.insert(b, key: "kb")      // B: xid A+1, draws id 1
        let aRow = db.insert(a, key: "ka")      // A draws id 2
        db.commit(a)
        let s = db.snapshot()
        #expect(s.xmin == s.xmax && s.xip.isEmpty, "B runs at or above xmax, unlisted: \(s)")
        #expect(!s.isVisible(db.transactions[b].xid!))
        relay.claim(&c, &db)
        #expect(relay.read == [aRow])
        db.commit(b)
        relay.claim(&c, &db)
        #expect(relay.read == [aRow, bRow], "B's row is read by the first claim after its commit")
    }

    @Test func aRowOfATransactionInTheInProgressListIsReadWhenItCommits() {
        var db = Model()
        var c = ClaimCursor()
        var relay = ModelRelay()
        let long = db.begin()
        let early = db.insert(long, key: "k")   // id 1, xid 1
        let t = db.begin()
        let later = db.insert(t, key: "j")       // id 2, xid 2
        db.commit(t)
        relay.claim(&c, &db)                    // sweep: sees id 2; xid 1 in xip
        #expect(relay.read == [later])
        for _ in 0..<5 {                        // other traffic meanwhile
            let o = db.begin(); _ = db.insert(o, key: "o"); db.commit(o)
            relay.claim(&c, &db)
        }
        db.commit(long)
        relay.claim(&c, &db)
        #expect(relay.read.last == early, "read at once: no waiting for other transactions to end")
    }

    /// Random transactions (xid first or not, savepoints rolled back, whole rollbacks, long
    /// ones), claims interleaved with small limits, deliveries, failures with rewinds: every
    /// committed row is read, no rolled-back row is, nothing is read twice in a generation, and no
    /// row is first read after a same-key row whose transaction began after its commit.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] as [UInt64])
    func randomConcurrentTransactionsKeepEveryPromise(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        var db = Model()
        var c = ClaimCursor()
        var relay = ModelRelay()
        var open: [Int] = []
        for _ in 0..<3000 {
            switch rng.next() % 10 {
            case 0, 1:
                let t = db.begin()
                if rng.next() % 10 < 6 { db.assignXid(t) }
                open.append(t)
            case 2, 3, 4:
                guard let t = open.randomElement(using: &rng) else { continue }
                let rows = Int(rng.next() % 3) + 1
                for _ in 0..<rows { _ = db.insert(t, key: "k\(rng.next() % 6)") }
                if rng.next() % 7 == 0 { db.insertRolledBackInSavepoint(t, key: "k\(rng.next() % 6)") }
            case 5, 6:
                guard !open.isEmpty else { continue }
                // Mostly the newest transactions end; a few stay open long.
                let i = rng.next() % 5 == 0 ? Int(rng.next() % UInt64(open.count)) : open.count - 1
                let t = open.remove(at: i)
                if rng.next() % 10 == 0 { db.rollback(t) } else { db.commit(t) }
            case 7, 8:
                relay.claim(&c, &db, limit: Int(rng.next() % 4) + 1)
            default:
                relay.deliverSome(&db, &rng)
                if rng.next() % 15 == 0 { relay.failOne(&c, &rng) }
            }
        }
        for t in open { db.commit(t) }
        for _ in 0..<5000 where !(relay.inFlight.isEmpty && db.live.isEmpty) {
            relay.claim(&c, &db, limit: 7)
            relay.deliverAll(&db)
        }
        let left = db.live.keys.sorted()
        #expect(left.isEmpty, "seed \(seed): rows never relayed: \(left.prefix(10))")
        let committed = Set(db.rows.values.filter { db.transactions[$0.txn].state == .committed && !$0.rolledBack }.map(\.id))
        let rolledBack = Set(db.rows.values.filter { db.transactions[$0.txn].state == .aborted || $0.rolledBack }.map(\.id))
        #expect(Set(relay.read).isSuperset(of: committed), "seed \(seed): missing")
        #expect(Set(relay.read).isDisjoint(with: rolledBack), "seed \(seed): a rolled-back row was read")
        #expect(relay.readTwiceInAGeneration == 0, "seed \(seed)")
        // Causal order of first reads, per key.
        var position: [Int64: Int] = [:]
        for (i, id) in relay.read.enumerated() where position[id] == nil { position[id] = i }
        var inversions = 0
        for a in db.rows.values where committed.contains(a.id) {
            let commitA = db.transactions[a.txn].endedAt!
            for b in db.rows.values where b.key == a.key && committed.contains(b.id) && b.insertedAt > commitA {
                if position[b.id]! < position[a.id]! { inversions += 1 }
            }
        }
        #expect(inversions == 0, "seed \(seed): causal inversions")
    }
}

// MARK: - A model of PostgreSQL's transactions and snapshots

struct Model {
    enum State { case running, committed, aborted }
    struct Transaction {
        var xid: UInt64?
        var state = State.running
        var endedAt: Int?
    }
    struct Row {
        let id: Int64
        let txn: Int
        let key: String
        let insertedAt: Int
        var rolledBack = false
    }
    var transactions: [Transaction] = []
    var rows: [Int64: Row] = [:]
    /// Rows not deleted yet (by id).
    var live: [Int64: Row] = [:]
    var nextXid: UInt64 = 100
    var latestCompleted: UInt64 = 99
    var nextId: Int64 = 1
    var clock = 0

    mutating func tick() -> Int { clock += 1; return clock }

    mutating func begin() -> Int {
        transactions.append(Transaction())
        return transactions.count - 1
    }

    mutating func assignXid(_ t: Int) {
        if transactions[t].xid == nil { transactions[t].xid = nextXid; nextXid += 1 }
    }

    /// The id (identity, CACHE 1) is drawn before `pg_current_xact_id()` assigns the xid.
    mutating func insert(_ t: Int, key: String) -> Int64 {
        let id = nextId
        nextId += 1
        assignXid(t)
        let row = Row(id: id, txn: t, key: key, insertedAt: tick())
        rows[id] = row
        live[id] = row
        return id
    }

    mutating func insertRolledBackInSavepoint(_ t: Int, key: String) {
        let id = insert(t, key: key)
        rows[id]!.rolledBack = true
        live[id] = nil
    }

    mutating func end(_ t: Int, _ state: State) {
        transactions[t].state = state
        transactions[t].endedAt = tick()
        if let xid = transactions[t].xid { latestCompleted = max(latestCompleted, xid) }
        if state == .aborted { for (id, r) in live where r.txn == t { live[id] = nil } }
    }
    mutating func commit(_ t: Int) { end(t, .committed) }
    mutating func rollback(_ t: Int) { end(t, .aborted) }

    /// GetSnapshotData: xmax = latestCompletedXid + 1; xip = running xids below xmax.
    func snapshot() -> PGSnapshot {
        let xmax = latestCompleted + 1
        let xip = transactions.compactMap { $0.state == .running ? $0.xid : nil }.filter { $0 < xmax }
        return PGSnapshot(xmin: xip.min() ?? xmax, xmax: xmax, xip: xip)
    }

    /// Rows the statement's MVCC snapshot sees: committed and not deleted.
    func visibleRows() -> [Row] {
        live.values.filter { transactions[$0.txn].state == .committed }.sorted { $0.id < $1.id }
    }

    /// Executes a claim request as OutboxQueries' statements do.
    func execute(_ r: ClaimCursor.Request) -> (PGSnapshot, [Row]) {
        let own = snapshot()
        let snap = r.snapshot ?? own
        let excluded = Set(r.excluded)
        let rows = visibleRows().filter { row in
            let txid = transactions[row.txn].xid!
            switch r.mode {
            case .sweep:
                return row.id > r.after && !excluded.contains(row.id) && snap.isVisible(txid)
            case .window:
                let since = r.since!
                return (txid >= since.xmax && txid < own.xmax) || since.xip.contains(txid)
            case .windowContinued:
                return row.id > r.after && snap.isVisible(txid) && !r.since!.isVisible(txid)
            }
        }
        return (snap, Array(rows.prefix(r.limit)))
    }
}

struct ModelRelay {
    var read: [Int64] = []
    var inFlight: [Int64] = []
    var readInGeneration: [Int: Set<Int64>] = [:]
    var readTwiceInAGeneration = 0

    mutating func claim(_ c: inout ClaimCursor, _ db: inout Model, limit: Int = 100) {
        repeat {
            let r = c.nextRequest(limit: limit, inFlight: inFlight)
            let (snapshot, rows) = db.execute(r)
            c.observe(r, snapshot: snapshot, lastRowId: rows.last?.id, rowCount: rows.count)
            for row in rows {
                if !readInGeneration[r.generation, default: []].insert(row.id).inserted { readTwiceInAGeneration += 1 }
                read.append(row.id)
                inFlight.append(row.id)
            }
        } while c.hasMore && inFlight.count < 40
    }

    /// Acknowledged rows are deleted, oldest first.
    mutating func deliverSome(_ db: inout Model, _ rng: inout SplitMix) {
        let n = min(inFlight.count, Int(rng.next() % 4))
        for id in inFlight.prefix(n) { db.live[id] = nil }
        inFlight.removeFirst(n)
    }

    mutating func deliverAll(_ db: inout Model) {
        for id in inFlight { db.live[id] = nil }
        inFlight.removeAll()
    }

    /// A delivery fails: the row stays in the table and is read again after a rewind.
    mutating func failOne(_ c: inout ClaimCursor, _ rng: inout SplitMix) {
        guard !inFlight.isEmpty else { return }
        inFlight.remove(at: Int(rng.next() % UInt64(inFlight.count)))
        c.rewind()
    }
}
