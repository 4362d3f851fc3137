import Foundation
import Kafka
import Logging
import PGClient
import ServiceLifecycle
import Synchronization
import Tracing

/// Relays outbox rows to Kafka: claim → produce → await delivery report → lease-checked DELETE.
///
/// Four loops run concurrently on this actor:
/// - **claim**: reads the next rows of the shards this replica holds (woken by NOTIFY — on the
///   claim session's own thread, which then claims at once —, by room in the in-flight window, or
///   by the poll timer) and produces them at once, so batch N+1 is read and produced while batch
///   N waits for its reports;
/// - **reports**: takes delivery reports when librdkafka says they wait (no poller thread);
/// - **delete**: deletes acknowledged rows in one array statement per round;
/// - **leases**: heartbeats, renews, and rebalances shard leases.
///
/// Database work runs on ``PGSession``s pinned to their own threads; this actor never blocks.
/// (Sharing one thread between this actor and the claim session, so that a claim needs no
/// thread switch, measured 10 % more relay CPU per row of a trickle than Swift's global pool:
/// docs/BENCHMARKS.md.)
/// State lives in pure structs (``ClaimCursor``, ``InFlightWindow``, ``LeaseTable``) and is
/// re-checked after every suspension point.
public actor Relay: Service {

    public nonisolated let configuration: RelayConfiguration
    public nonisolated let replicaId: String
    let table: OutboxTable
    let logger: Logger
    let outbox: OutboxQueries
    let leaseQueries: LeaseQueries
    let deadLetters: DeadLetterQueries
    let metrics: RelayMetrics
    let backlog: BacklogQueries

    // Wake-ups and the stop flag, usable from any thread. The claim loop's also interrupts its
    // wait on the claim session (see `claimLoop`).
    nonisolated let claimWake = WakeSignal(interrupt: WaitInterrupt())
    nonisolated let deleteWake = WakeSignal()
    nonisolated let leaseWake = WakeSignal()
    nonisolated let windowWake = WakeSignal()
    nonisolated let stopFlag = AtomicFlag()
    /// Which insert notifications wake the claim loop (the shards held): updated by the lease
    /// loop, read on the claim session's thread. Sized for the largest shard count `migrate` allows.
    nonisolated let wakeFilter = WakeFilter(shardCount: 65_536)
    /// Set (on the claim session's thread) when another replica closed the notification gate.
    nonisolated let gateClosedElsewhere = AtomicFlag()
    /// Every message's produce → broker acknowledgement time, taken on librdkafka's broker thread
    /// as the acknowledgement is handled (``AckLatency``), across producer re-creations, and each
    /// acknowledgement's own time by the message's sequence number. Reports are taken later, at
    /// the end of the claim loop's next wait, so this is the only exact acknowledgement time;
    /// `/metrics` shows it (``ackLatencyMetricText()``), and commit → ack is dated by it.
    public nonisolated let ackLatency: AckLatency
    /// The slowest produce → acknowledgement among the messages acknowledged before the last
    /// claim of the read window (seconds; ClaimPacer's broker part of the path).
    var lastAcknowledgement = 0.0
    /// Set by the claim session's setup: a new connection, listening to the table's channel.
    nonisolated let claimSessionFresh = AtomicFlag()
    /// The claim session listens to the inserts' channel (see ``followRowsChannel``).
    var listeningForRows = true

    var cursor = ClaimCursor()
    let failurePolicy: FailurePolicy
    var window: InFlightWindow
    var leases = LeaseTable(shardCount: 1)
    var pendingDeletes: [UInt64] = []
    /// Rows admitted with a window sequence below this were in the window when a connection was
    /// lost: their ids may name other rows now (see `resyncAfterConnectionLoss`). 0: none.
    var staleBelowSeq: UInt64 = 0
    /// Rows lately acknowledged (see DeliveredMemory), and, during the first sweep after a lost
    /// connection, those of them not to be sent again when read again.
    var deliveredMemory = DeliveredMemory(capacity: 65_536)
    var alreadyDelivered: Set<DeliveredMemory.Row>?
    var redeliveriesAvoidedAtResync = 0
    /// When `pendingDeletes` last became non-empty.
    var pendingDeletesSince: Double?
    /// The WakeTimer entry that wakes the delete loop when no claim carried the pending deletes
    /// within `fusedDeleteWaitSeconds` (see `armFusedDeleteTimer`).
    var fusedDeleteTimer: UInt64?
    /// The claim loop is taking reports just before its claim (`takeDeferredEvents`): the deletes
    /// they make pending ride that claim, and the timer is armed only for what it left
    /// (`armFusedDeleteTimerIfPending`).
    var claimTakesDeletes = false
    /// The last claim read everything there was (a trickle, not a backlog).
    var claimCaughtUp = false
    /// Rows to move to the dead-letter table: window sequence → (reason, error code).
    var pendingDeadLetters: [UInt64: (reason: String, code: String?)] = [:]
    /// Failed attempts to record on the rows (ids, last error).
    var pendingAttempts: [(ids: [Int64], error: String)] = []
    var retries = RetryBook()
    /// Rows a batch-level bad-row error blamed along with the rest of their batch. Each is
    /// produced alone (lowest id first, nothing else in flight) before claiming resumes, so a
    /// second failure names the culprit exactly and innocent rows are never dead-lettered.
    var suspects: [Int64: ClaimedRow] = [:]
    /// Window sequence of the suspect being probed.
    var probeSeq: UInt64?
    /// Last successful delivery per topic, tracked while rows are failing (attempt counting).
    var topicLastSuccess: [String: Double] = [:]
    var consecutiveFencing = 0
    /// How long rows have been awaited with no delivery succeeding (see DeliveryWatchdog).
    var watchdog = DeliveryWatchdog()
    var deadLetterSequence: UInt64 = 1 << 63
    /// Running, re-creating the producer, or one of the shutdown steps (see RelayLifecycle).
    var lifecycle = RelayLifecycle()
    var recreating: Bool { lifecycle.state == .recreatingProducer }
    var terminated: Bool { lifecycle.terminated }
    var lastClaimable: [Int32] = []
    /// How the claim loop waits when caught up (only with the notification gate).
    var wakeMode = WakeMode()
    /// How long a caught-up claim waits for company (``ClaimPacer``).
    var pacer = ClaimPacer(target: 0, busyPoll: 0.005)
    /// The last claim that read in its own snapshot (a window's or a sweep's first page): that
    /// snapshot, and a database-clock time no later than when it was taken. The next window's
    /// rows committed after it (``ClaimPacer``'s `committedWithin`).
    var lastOwnSnapshot: (snapshot: PGSnapshot, takenByMicros: Int64)?
    var notificationGate = false
    /// The replicas table has the `busy` column (see OutboxSchemaInfo.replicaBusy).
    var replicaBusy = false
    /// The claim loop's idle waits, sampled into its busy share at each heartbeat.
    var busyMeter = BusyMeter()
    /// The database's clock minus this host's (µs), from the last claim: latencies from a row's
    /// created_at are measured on the database's clock.
    var databaseClockOffsetMicros: Int64 = 0
    /// The gate value this replica set last (nil when it has not, or closed it).
    var gateOpenedAt: Int64?
    /// Seconds the next claim sleeps on the claim session's thread before it runs (a busy poll).
    var pollPause = 0.0
    /// Caught up and notified: the next claim first waits, on the claim session's thread, up to
    /// this many seconds for a notification (see `claimLoop`).
    var notifiedWait = 0.0
    /// A backlog's next claim, started before the previous batch was produced (see prefetchClaim).
    var prefetchedClaim: PrefetchedClaim?
    /// The claim loop is waiting for room in the in-flight window (a DELETE should wake it).
    var claimWaitsForRoom = false
    /// Average message bytes of recently claimed rows (nil until a row was seen).
    var averageRowBytes: Double?
    var pausedUntil: Double = 0
    var failureStreak = 0
    var metadataRefreshedAt: [String: Double] = [:]
    // Health: loop heartbeats, last successful lease round, broker probe, assignment.
    var claimLoopBeat: Double = 0
    var leaseLoopBeat: Double = 0
    var lastLeaseOK: Double = 0
    var lastDatabaseError: String?
    var brokerError: String? = "not probed yet"
    var probing = false
    var desiredShardCount = 0
    var desiredSince: Double = 0
    var stats = RelayStatistics()
    /// The hot path's metric updates, flushed a few times a second (see MetricsBatch).
    var metricsBatch = MetricsBatch()
    /// Consecutive failures of DELETE / dead-letter statements; shutdown gives up after 25 in a row.
    var deleteFailures = ConsecutiveFailures(limit: 25)
    /// Row id → where the broker acknowledged it; only with `configuration.recordsDeliveries`.
    var ledger: [Int64: DeliveryPlace] = [:]
    var shardCount = 0
    /// Open producer spans by window sequence (only with a tracer; see Relay+Tracing).
    var spans: [UInt64: any Span] = [:]

    var claimSession: PGSession?
    var deleteSession: PGSession?
    var leaseSession: PGSession?
    var producer: KafkaProducer?
    /// Signalled by librdkafka (from its own thread) when the producer's event queue goes from
    /// empty to non-empty; the report loop then takes the events.
    nonisolated let reportWake = WakeSignal()
    /// Whether that signal is sent now or deferred until a busy poll's claim returns.
    nonisolated let reportDeferral: ReportDeferral
    /// The report loop runs (set by `start`, cleared by `terminate`).
    var reportsOpen = false

    static let fencingStormThreshold = 10
    /// Start-up checks retried this many times when an established connection breaks or the
    /// server is momentarily unable (back-off 0.2 s growing to 1 s: about 17 s in all). Five
    /// tries within 3 s gave up under a storm of terminated connections once the checks grew.
    static let startupRetries = 20
    /// Longest a DELETE waits for more delivery reports to fill its batch.
    static let deleteGatherSeconds = 0.005
    /// How long acknowledged rows wait for a claim to carry their DELETE before the delete loop
    /// deletes them by themselves.
    static let fusedDeleteWaitSeconds = 0.05
    /// How long a producer re-creation waits for the old instance's last reports.
    static let recreationReportWait = 2.0
    static let maxRetryBackoff = 30.0

    public init(configuration: RelayConfiguration, logger: Logger) throws(RelayError) {
        try configuration.validate()
        self.configuration = configuration
        self.table = try OutboxTable(configuration.table, layout: configuration.layout)
        var shape = configuration.shape
        shape.relayName = configuration.replicaName ?? ""

        self.leaseQueries = LeaseQueries(table: table)
        self.deadLetters = DeadLetterQueries(table: table)
        self.metrics = RelayMetrics(table: table.description)
        self.backlog = BacklogQueries(table: table)
        self.replicaId = configuration.replicaName ?? Self.defaultReplicaName()
        shape.relayName = replicaId
        self.outbox = OutboxQueries(table: table, shape: shape)
        var logger = logger
        logger[metadataKey: LogKey.replica] = .string(replicaId)
        logger[metadataKey: LogKey.table] = .string(table.description)
        self.logger = logger
        self.reportDeferral = ReportDeferral(wake: reportWake)
        self.window = InFlightWindow(maxRows: configuration.maxInFlightRows, maxBytes: configuration.maxInFlightBytes)
        // Twice the window: a row's slot outlives the rows admitted after it while it waits.
        self.ackLatency = AckLatency(keepingTimesOf: 2 * configuration.maxInFlightRows)
        self.failurePolicy = FailurePolicy(maxAttempts: configuration.maxAttempts,
                                           backoffBase: Double(configuration.retryBackoffMillis) / 1000,
                                           backoffCap: Double(configuration.retryBackoffMaxMillis) / 1000)
    }

    static func defaultReplicaName() -> String {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "relay"
        return "\(host)-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Asks the relay to stop: no new claims, flush with a deadline, delete what was
    /// acknowledged, release the leases, return from `run()`.
    public nonisolated func shutdown() {
        stopFlag.set()
        claimWake.signal()
        windowWake.signal()
        leaseWake.signal()
        deleteWake.signal()
    }

    /// A snapshot of the counters.
    public func statistics() -> RelayStatistics {
        var s = stats
        s.shardsHeld = leases.heldShards.count
        s.inFlightRows = window.rows
        s.inFlightBytes = window.bytes
        s.checksStaleRows = staleBelowSeq > 0
        return s
    }

    /// Where the broker acknowledged each relayed row (row id → topic, partition, offset), when
    /// `configuration.recordsDeliveries` is on; empty otherwise.
    @_spi(Testing) public func deliveryLedger() -> [Int64: DeliveryPlace] { ledger }

    /// Shards held right now.
    public func heldShards() -> [Int32] { leases.heldShards }

    // MARK: Run

    /// Runs until ``shutdown()`` (or SIGTERM/SIGINT through service-lifecycle's graceful shutdown).
    public func run() async throws {
        try await start()
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await self.runLoops()
            } onCancel: {
                self.shutdown()
            }
        } onGracefulShutdown: {
            self.shutdown()
        }
    }

    /// The loops, then shutdown in RelayLifecycle's order: drain, purge what is left, stop the
    /// loops (deletes finish), close the producer, and only then release the leases.
    func runLoops() async {
        guard reportsOpen else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reportLoop() }
            group.addTask { await self.deleteLoop() }
            group.addTask { await self.leaseLoop() }
            await self.claimLoop()
            await self.drain()
            await self.purgeUnreported()
            if configuration.deadLetterTopic != nil, deadLetterSequence > 1 << 63, let producer {
                // Dead-letter copies are not in the window (the table is the record), so drain()
                // did not wait for them: give them a moment to leave before the producer is closed.
                _ = await producer.flushAsync(timeoutMilliseconds: Int32(min(configuration.shutdownTimeoutMillis, 2_000)))
            }
            self.terminate()
            await group.waitForAll()
        }
        if let producer {
            self.producer = nil
            await producer.closeAsync()
        }
        endOrphanSpans(outcome: "left in the outbox at shutdown", all: true)
        metricsBatch.flush(into: metrics)
        stats.producerClosedAt = monotonicSeconds()
        lifecycle.producerClosed()
        await leave()
        stats.leasesReleasedAt = monotonicSeconds()
        lifecycle.left()
        await closeSessions()
        logger.info("relay stopped", metadata: [
            "outbox.delivered": .stringConvertible(stats.delivered), "outbox.deleted": .stringConvertible(stats.deleted),
        ])
    }

    func closeSessions() async {
        for s in [claimSession, deleteSession, leaseSession] { await s?.close() }
        claimSession = nil
        deleteSession = nil
        leaseSession = nil
    }

    /// Waits (bounded by the shutdown timeout) until every produced row is reported and deleted.
    /// A producer re-creation under way is let finish first (it has its own bounded wait).
    func drain() async {
        let deadline = monotonicSeconds() + Double(configuration.shutdownTimeoutMillis) / 1000
        while lifecycle.stopRequested() == .waitForRecreation {
            await windowWake.wait(timeout: 0.1)
        }
        while !window.isEmpty {
            let left = deadline - monotonicSeconds()
            if left <= 0 {
                logger.warning("shutdown deadline passed with rows unacknowledged; they stay in the outbox", metadata: [
                    "outbox.in_flight_rows": .stringConvertible(window.rows),
                ])
                break
            }
            await windowWake.wait(timeout: left)
        }
    }

    /// Messages still without a report after the drain are purged — librdkafka sends nothing more
    /// of them — and their purge reports taken (bounded), before the leases may be released. Their
    /// rows stay in the outbox for the shard's next owner.
    func purgeUnreported() async {
        if window.awaitingReport > 0, let producer { await purgeAndTakeReports(producer) }
        lifecycle.drained()
    }

    func terminate() {
        reportsOpen = false
        reportWake.signal()
        deleteWake.signal()
        leaseWake.signal()
    }

    func leave() async {
        guard let session = leaseSession else { return }
        let replica = replicaId
        let queries = leaseQueries
        do {
            try await session.withConnection { conn throws(PGError) in
                try queries.leave(conn, replica: replica)
                try queries.notifyRebalance(conn)
            }
            leases.released(leases.heldShards)
            logger.info("released all leases")
        } catch {
            logger.warning("could not release leases; they expire after the lease duration", metadata: [LogKey.error: "\(error)"])
        }
    }

}
