import Foundation
import Kafka
import Logging
import PGClient
import ServiceLifecycle
import Synchronization

/// Relays outbox rows to Kafka: claim → produce → await delivery report → lease-checked DELETE.
///
/// Four loops run concurrently on this actor:
/// - **claim**: reads the next rows of the shards this replica holds (woken by NOTIFY, by room in
///   the in-flight window, or by the poll timer) and produces them at once, so batch N+1 is read
///   and produced while batch N waits for its reports;
/// - **reports**: takes delivery reports from the producer's poller thread;
/// - **delete**: deletes acknowledged rows in one array statement per round;
/// - **leases**: heartbeats, renews, and rebalances shard leases.
///
/// Database work runs on ``PGSession``s pinned to their own threads; this actor never blocks.
/// State lives in pure structs (``ClaimCursor``, ``InFlightWindow``, ``LeaseTable``) and is
/// re-checked after every suspension point.
public actor Relay: Service {
    public nonisolated let configuration: RelayConfiguration
    public nonisolated let replicaId: String
    private let table: OutboxTable
    private let logger: Logger
    private let outbox: OutboxQueries
    private let leaseQueries: LeaseQueries

    // Wake-ups and the stop flag, usable from any thread.
    private nonisolated let claimWake = WakeSignal()
    private nonisolated let deleteWake = WakeSignal()
    private nonisolated let leaseWake = WakeSignal()
    private nonisolated let windowWake = WakeSignal()
    private nonisolated let stopFlag = StopFlag()

    private var cursor = ClaimCursor()
    private var window: InFlightWindow
    private var leases = LeaseTable(shardCount: 1)
    private var pendingDeletes: [UInt64] = []
    private var lastClaimable: [Int32] = []
    private var pausedUntil: Double = 0
    private var failureStreak = 0
    private var terminated = false
    private var stats = RelayStatistics()
    private var shardCount = 0

    private var claimSession: PGSession?
    private var deleteSession: PGSession?
    private var leaseSession: PGSession?
    private var producer: KafkaProducer?
    private var listener: PGListener?

    static let sweepInterval = 0.25
    static let maxRetryBackoff = 30.0

    public init(configuration: RelayConfiguration, logger: Logger) throws(RelayError) {
        try configuration.validate()
        self.configuration = configuration
        self.table = try OutboxTable(configuration.table)
        self.outbox = OutboxQueries(table: table)
        self.leaseQueries = LeaseQueries(table: table)
        self.replicaId = configuration.replicaName ?? Self.defaultReplicaName()
        var logger = logger
        logger[metadataKey: LogKey.replica] = .string(replicaId)
        logger[metadataKey: LogKey.table] = .string(table.description)
        self.logger = logger
        self.window = InFlightWindow(maxRows: configuration.maxInFlightRows, maxBytes: configuration.maxInFlightBytes)
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
        return s
    }

    /// Shards held right now.
    public func heldShards() -> [Int32] { leases.heldShards }

    // MARK: Start-up

    /// Connects, checks the schema and the producer configuration. Throws a ``RelayError`` naming
    /// what is wrong (unreachable database, missing table — suggesting `migrate` —, bad property).
    public func start() async throws(RelayError) {
        guard claimSession == nil else { return }
        try Librdkafka.checkVersionForRelay()
        let timeout = configuration.statementTimeoutMillis
        let setup: @Sendable (PGConnection) throws(PGError) -> Void = { conn throws(PGError) in
            try conn.executeScript("SET statement_timeout = \(timeout); SET lock_timeout = \(timeout); SET idle_in_transaction_session_timeout = \(timeout * 2)")
        }
        let app = "outbox-relay"
        let url = configuration.databaseURL
        let claim = PGSession(url: url, applicationName: app, label: "claim", setup: setup)
        let table = self.table
        let info: OutboxSchemaInfo
        do {
            info = try await claim.withConnection { conn throws(PGError) -> Result<OutboxSchemaInfo, RelayError> in
                do throws(RelayError) { return .success(try SchemaCheck.check(conn, table: table)) } catch { return .failure(error) }
            }.get()
        } catch let error as PGError {
            await claim.close()
            throw RelayError(database: error, context: "cannot connect to the database")
        } catch let error as RelayError {
            await claim.close()
            throw error
        } catch {
            await claim.close()
            throw RelayError(.internalState, "\(error)")
        }
        shardCount = info.shardCount
        leases = LeaseTable(shardCount: info.shardCount)
        claimSession = claim
        deleteSession = PGSession(url: url, applicationName: app, label: "delete", setup: setup)
        leaseSession = PGSession(url: url, applicationName: app, label: "lease", setup: setup)

        let (stream, continuation) = AsyncStream.makeStream(of: KafkaProducer.Event.self)
        reportStream = stream
        do {
            producer = try KafkaProducer(configuration: configuration.kafkaConfiguration(clientId: "outbox-relay-\(replicaId)")) { event in
                continuation.yield(event)
            }
        } catch {
            await closeSessions()
            throw RelayError(kafka: error, context: "cannot create the Kafka producer")
        }
        reportContinuation = continuation
        let listener = PGListener(url: url, applicationName: "outbox-relay-listen", channels: [table.channel],
                                  onError: { [logger] error in
                                      logger.warning("notification listener reconnecting", metadata: [LogKey.error: "\(error)"])
                                  }) { [claimWake, leaseWake] note in
            if let note, note.payload == OutboxTable.rebalancePayload {
                leaseWake.signal()
            } else {
                claimWake.signal()
                if note == nil { leaseWake.signal() }
            }
        }
        self.listener = listener
        listener.start()
        logger.info("relay started", metadata: [
            "outbox.shards": "\(info.shardCount)", "kafka.librdkafka": "\(Librdkafka.versionString)",
        ])
    }

    private var reportStream: AsyncStream<KafkaProducer.Event>?
    private var reportContinuation: AsyncStream<KafkaProducer.Event>.Continuation?

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

    private func runLoops() async {
        guard let stream = reportStream else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reportLoop(stream) }
            group.addTask { await self.deleteLoop() }
            group.addTask { await self.leaseLoop() }
            await self.claimLoop()
            await self.drain()
            await self.terminate()
            await group.waitForAll()
        }
        await leave()
        producer?.close()
        producer = nil
        listener?.stop()
        listener = nil
        await closeSessions()
        logger.info("relay stopped", metadata: [
            "outbox.delivered": "\(stats.delivered)", "outbox.deleted": "\(stats.deleted)",
        ])
    }

    private func closeSessions() async {
        for s in [claimSession, deleteSession, leaseSession] { await s?.close() }
        claimSession = nil
        deleteSession = nil
        leaseSession = nil
    }

    /// Waits (bounded by the shutdown timeout) until every produced row is reported and deleted.
    private func drain() async {
        let deadline = monotonicSeconds() + Double(configuration.shutdownTimeoutMillis) / 1000
        while !window.isEmpty {
            let left = deadline - monotonicSeconds()
            if left <= 0 {
                logger.warning("shutdown deadline passed with rows unacknowledged; they stay in the outbox", metadata: [
                    "outbox.in_flight_rows": "\(window.rows)",
                ])
                break
            }
            await windowWake.wait(timeout: left)
        }
    }

    private func terminate() {
        terminated = true
        reportContinuation?.finish()
        deleteWake.signal()
        leaseWake.signal()
    }

    private func leave() async {
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

    // MARK: Claim and produce

    private func claimLoop() async {
        let poll = Double(configuration.pollIntervalMillis) / 1000
        while !stopFlag.isSet {
            let now = monotonicSeconds()
            if now < pausedUntil {
                await claimWake.wait(timeout: pausedUntil - now)
                continue
            }
            let shards = leases.claimable(now: now)
            if shards != lastClaimable {
                if !Set(shards).isSubset(of: Set(lastClaimable)) { cursor.reset() }
                lastClaimable = shards
            }
            let room = window.rowRoom
            guard !shards.isEmpty, room > 0, let session = claimSession else {
                await claimWake.wait(timeout: poll)
                continue
            }
            let limit = min(configuration.batchSize, room)
            let request = cursor.nextRequest(limit: limit, inFlight: window.rowIds, now: now, sweepInterval: Self.sweepInterval)
            let queries = outbox
            let batch: ClaimBatch
            do {
                batch = try await session.withConnection { conn throws(PGError) in
                    try queries.claim(conn, shards: shards, request: request)
                }
            } catch {
                logger.warning("claim failed; retrying", metadata: [LogKey.error: "\(error)"])
                backOff()
                continue
            }
            stats.claims += 1
            if request.mode == .sweep { stats.sweeps += 1 }
            cursor.observe(request, .init(snapshotXmin: batch.snapshotXmin, snapshotXmax: batch.snapshotXmax,
                                          lastRowId: batch.rows.last?.id, rowCount: batch.rows.count),
                           now: monotonicSeconds())
            produce(batch.rows)
            if batch.rows.count < limit && !cursor.sweepForced {
                // Idle: sleep until NOTIFY, window room or the poll timer — or until a sweep is due.
                let wait = cursor.ripeTarget > cursor.floor ? min(poll, Self.sweepInterval) : poll
                await claimWake.wait(timeout: wait)
            }
        }
    }

    private func produce(_ rows: [ClaimedRow]) {
        guard let producer else { return }
        let now = monotonicSeconds()
        for row in rows {
            guard leases.producibleEpoch(row.shard, now: now) != nil else {
                // Lease lapsed locally between claim and produce: read the row again later.
                cursor.rewind(below: row.id)
                continue
            }
            let seq = window.admit(rowId: row.id, shard: row.shard, bytes: row.message.byteCount,
                                   createdAtMicros: row.createdAtMicros)
            do {
                try producer.produce(row.message, opaque: seq)
            } catch {
                window.cancel(seq)
                stats.failed += 1
                // Later rows (maybe of the same key) must not overtake this one: stop here and
                // re-read from it after a back-off.
                cursor.rewind(below: row.id)
                logger.error("cannot produce row; it stays in the outbox and is retried", metadata: [
                    LogKey.rowId: "\(row.id)", LogKey.topic: "\(row.message.topic)", LogKey.error: "\(error)",
                ])
                backOff()
                return
            }
        }
    }

    private func backOff() {
        failureStreak += 1
        let base = Double(configuration.retryBackoffMillis) / 1000
        let delay = min(Self.maxRetryBackoff, base * pow(2, Double(min(failureStreak - 1, 20))))
        pausedUntil = monotonicSeconds() + delay * Double.random(in: 0.8...1.2)
    }

    // MARK: Delivery reports

    private func reportLoop(_ stream: AsyncStream<KafkaProducer.Event>) async {
        for await event in stream {
            switch event {
            case .deliveryReports(let reports):
                handle(reports)
            case .error(let error):
                if error.isFatal {
                    logger.error("fatal Kafka producer error", metadata: [LogKey.error: "\(error)"])
                } else {
                    logger.warning("Kafka client error", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
    }

    private func handle(_ reports: [DeliveryReport]) {
        var firstFailure: Int64?
        for report in reports {
            if let error = report.error {
                guard let entry = window.fail(report.opaque) else { continue }
                stats.failed += 1
                firstFailure = min(firstFailure ?? entry.rowId, entry.rowId)
                logger.warning("delivery failed; the row stays in the outbox and is retried", metadata: [
                    LogKey.rowId: "\(entry.rowId)", LogKey.shard: "\(entry.shard)", LogKey.error: "\(error)",
                ])
            } else if window.acknowledge(report.opaque) != nil {
                stats.delivered += 1
                pendingDeletes.append(report.opaque)
            }
        }
        if let firstFailure {
            cursor.rewind(below: firstFailure)
            backOff()
        } else if !pendingDeletes.isEmpty {
            failureStreak = 0
        }
        if !pendingDeletes.isEmpty { deleteWake.signal() }
        if firstFailure != nil { claimWake.signal(); windowWake.signal() }
    }

    // MARK: Delete

    private func deleteLoop() async {
        while true {
            if pendingDeletes.isEmpty {
                if terminated { return }
                await deleteWake.wait(timeout: 1)
                continue
            }
            let seqs = pendingDeletes
            pendingDeletes.removeAll(keepingCapacity: true)
            let ids = seqs.compactMap { window.entry($0)?.rowId }
            let epochs = leases.epochArray()
            let owner = replicaId
            let queries = outbox
            guard let session = deleteSession else { return }
            do {
                let deleted = try await session.withConnection { conn throws(PGError) in
                    try queries.delete(conn, ids: ids, owner: owner, epochs: epochs)
                }
                stats.deleted += deleted
                if deleted < ids.count {
                    stats.lostLeaseRows += ids.count - deleted
                    logger.warning("lease lost: acknowledged rows were left for the shard's new owner (they may be sent again)", metadata: [
                        "outbox.rows": "\(ids.count - deleted)",
                    ])
                }
                let drainingBefore = Set(leases.leases.filter { $0.value.phase == .draining }.keys)
                for s in seqs { window.settle(s) }
                if drainingBefore.contains(where: { window.byShard[$0] == nil }) { leaseWake.signal() }
                claimWake.signal()
                windowWake.signal()
            } catch {
                // The DELETE is idempotent: keep the ids and try again.
                pendingDeletes.insert(contentsOf: seqs, at: 0)
                logger.warning("delete failed; retrying", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: 200_000_000)
                if terminated && stopFlag.isSet && deleteAttemptsExhausted() { return }
            }
        }
    }

    private var deleteFailures = 0
    private func deleteAttemptsExhausted() -> Bool {
        deleteFailures += 1
        return deleteFailures > 25
    }

    // MARK: Leases

    private func leaseLoop() async {
        let interval = Double(configuration.effectiveHeartbeatMillis) / 1000
        var first = true
        while !terminated {
            await leaseTick(announce: first)
            first = false
            await leaseWake.wait(timeout: interval)
        }
    }

    private func leaseTick(announce: Bool) async {
        guard let session = leaseSession else { return }
        let queries = leaseQueries
        let replica = replicaId
        let leaseMillis = Int64(configuration.leaseDurationMillis)
        let duration = Double(configuration.leaseDurationMillis) / 1000
        let margin = Double(RelayConfiguration.leaseSafetyMarginMillis) / 1000
        let host = ProcessInfo.processInfo.hostName
        let pid = getpid()
        let held = leases.heldShards
        let sentAt = monotonicSeconds()
        do {
            let (live, renewed) = try await session.withConnection { conn throws(PGError) in
                let live = try queries.heartbeat(conn, replica: replica, hostname: host, pid: pid,
                                                 version: RelayVersion.current, leaseMillis: leaseMillis)
                let renewed = try queries.renew(conn, replica: replica, shards: held, leaseMillis: leaseMillis)
                if announce { try queries.notifyRebalance(conn) }
                return (live, renewed.map { RenewedLease(shard: $0.shard, epoch: $0.epoch) })
            }
            stats.liveReplicas = live.count
            // Shards acquired while the renewal ran are not in `held`; keep them.
            let lost = leases.renewed(renewed.map { ($0.shard, $0.epoch) } + leases.leases.filter { !held.contains($0.key) }.map { ($0.key, $0.value.epoch) },
                                      sentAt: sentAt, duration: duration, margin: margin)
            if !lost.isEmpty {
                logger.warning("lost shard leases to another replica", metadata: ["outbox.shards": "\(lost)"])
            }
            if stopFlag.isSet { return }
            let desired = ShardAssignment.shards(for: replica, among: live, shardCount: shardCount)
            let plan = leases.plan(desired: desired, inFlightByShard: window.byShard)
            leases.drain(plan.drain)
            leases.reactivate(plan.reactivate)
            if !plan.release.isEmpty {
                try await session.withConnection { conn throws(PGError) in
                    try queries.release(conn, replica: replica, shards: plan.release)
                    try queries.notifyRebalance(conn)
                }
                leases.released(plan.release)
                logger.info("released shards", metadata: ["outbox.shards": "\(plan.release.count)"])
            }
            if !plan.acquire.isEmpty {
                let acquireAt = monotonicSeconds()
                let got = try await session.withConnection { conn throws(PGError) in
                    try queries.acquire(conn, replica: replica, shards: plan.acquire, leaseMillis: leaseMillis)
                        .map { RenewedLease(shard: $0.shard, epoch: $0.epoch) }
                }
                if !got.isEmpty {
                    leases.acquired(got.map { ($0.shard, $0.epoch) }, sentAt: acquireAt, duration: duration, margin: margin)
                    logger.info("acquired shards", metadata: ["outbox.shards": "\(got.count)", "outbox.held": "\(leases.heldShards.count)"])
                }
            }
            // Wake the claim loop only when what it may claim changed (new or resumed shards):
            // an idle relay is otherwise woken by NOTIFY or its poll timer alone.
            if leases.claimable(now: monotonicSeconds()) != lastClaimable { claimWake.signal() }
        } catch {
            logger.warning("lease heartbeat failed", metadata: [LogKey.error: "\(error)"])
        }
    }
}

struct RenewedLease: Sendable {
    let shard: Int32
    let epoch: Int64
}

/// A stop flag readable from any thread.
final class StopFlag: Sendable {
    private let flag = Synchronization.Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// Dotted metadata keys used in log lines, in one place.
public enum LogKey {
    public static let replica = "outbox.replica"
    public static let table = "outbox.table"
    public static let rowId = "outbox.row_id"
    public static let shard = "outbox.shard"
    public static let topic = "kafka.topic"
    public static let error = "error"
}

/// The relay's version string (recorded in the replicas table).
public enum RelayVersion {
    public static let current = "0.1.0"
}

extension Librdkafka {
    static func checkVersionForRelay() throws(RelayError) {
        do { try checkVersion() } catch { throw RelayError(kafka: error, context: "unsupported librdkafka") }
    }
}
