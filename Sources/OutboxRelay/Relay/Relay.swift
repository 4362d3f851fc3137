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
    private let deadLetters: DeadLetterQueries
    private let metrics: RelayMetrics
    private let backlog: BacklogQueries

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
    /// Rows to move to the dead-letter table: window sequence → (reason, error code).
    private var pendingDeadLetters: [UInt64: (reason: String, code: String?)] = [:]
    /// Failed attempts to record on the rows (ids, last error).
    private var pendingAttempts: [(ids: [Int64], error: String)] = []
    private var retries = RetryBook()
    /// Rows a batch-level bad-row error blamed along with the rest of their batch. Each is
    /// produced alone (lowest id first, nothing else in flight) before claiming resumes, so a
    /// second failure names the culprit exactly and innocent rows are never dead-lettered.
    private var suspects: [Int64: ClaimedRow] = [:]
    /// Window sequence of the suspect being probed.
    private var probeSeq: UInt64?
    /// Last successful delivery per topic, tracked while rows are failing (attempt counting).
    private var topicLastSuccess: [String: Double] = [:]
    private var consecutiveFencing = 0
    /// Last successful delivery (or producer creation): what the watchdog measures silence from.
    private var lastSuccessAt: Double = 0
    private var deadLetterSequence: UInt64 = 1 << 63
    private var recreating = false
    private var recreationScheduled = false
    private var lastClaimable: [Int32] = []
    private var pausedUntil: Double = 0
    private var failureStreak = 0
    private var terminated = false
    private var metadataRefreshedAt: [String: Double] = [:]
    // Health: loop heartbeats, last successful lease round, broker probe, assignment.
    private var claimLoopBeat: Double = 0
    private var leaseLoopBeat: Double = 0
    private var lastLeaseOK: Double = 0
    private var lastDatabaseError: String?
    private var brokerError: String? = "not probed yet"
    private var probing = false
    private var desiredShardCount = 0
    private var desiredSince: Double = 0
    private var stats = RelayStatistics()
    /// Row id → where the broker acknowledged it; only with `configuration.recordsDeliveries`.
    private var ledger: [Int64: DeliveryPlace] = [:]
    private var shardCount = 0

    private var claimSession: PGSession?
    private var deleteSession: PGSession?
    private var leaseSession: PGSession?
    private var producer: KafkaProducer?
    private var listener: PGListener?

    static let claimGatherNanoseconds: UInt64 = 1_000_000
    static let maxRetryBackoff = 30.0

    public init(configuration: RelayConfiguration, logger: Logger) throws(RelayError) {
        try configuration.validate()
        self.configuration = configuration
        self.table = try OutboxTable(configuration.table)
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

    /// Where the broker acknowledged each relayed row (row id → topic, partition, offset), when
    /// `configuration.recordsDeliveries` is on; empty otherwise.
    public func deliveryLedger() -> [Int64: DeliveryPlace] { ledger }

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
        // rd_kafka_new spends tens of milliseconds in one-time library set-up (OpenSSL and SASL
        // plug-ins, even for plaintext): create the producer on its own thread while the
        // database is connected and checked, and it starts fetching its producer id meanwhile.
        let (stream, continuation) = AsyncStream.makeStream(of: ProducerEvent.self)
        reportStream = stream
        reportContinuation = continuation
        let pendingProducer = startProducerCreation()
        // The claim session runs only the claim statements, whose plans are prepared once and
        // reused: a plan cached while the table was small must not become a sequential scan of a
        // large backlog (a window's rows are found on the txid index, a sweep walks the key).
        let claimSetup: @Sendable (PGConnection) throws(PGError) -> Void = { conn throws(PGError) in
            try setup(conn)
            try conn.executeScript("SET enable_seqscan = off")
        }
        let claim = PGSession(url: url, applicationName: app, label: "claim", setup: claimSetup)
        let table = self.table
        let info: OutboxSchemaInfo
        do {
            info = try await checkSchema(claim)
        } catch {
            await claim.close()
            if case .success(let unused) = await pendingProducer.value { unused.close() }
            switch error {
            case let error as PGError: throw RelayError(database: error, context: "cannot connect to the database")
            case let error as RelayError: throw error
            default: throw RelayError(.internalState, "\(error)")
            }
        }
        shardCount = info.shardCount
        leases = LeaseTable(shardCount: info.shardCount)
        claimSession = claim
        deleteSession = PGSession(url: url, applicationName: app, label: "delete", setup: setup)
        leaseSession = PGSession(url: url, applicationName: app, label: "lease", setup: setup)

        do {
            producer = try await pendingProducer.value.get()
        } catch {
            await closeSessions()
            throw RelayError(kafka: error, context: "cannot create the Kafka producer")
        }
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

    /// The start-up checks, retried when an established connection breaks under them (a
    /// terminated backend, a restart); a database that cannot be reached at all is refused at once.
    private func checkSchema(_ session: PGSession) async throws -> OutboxSchemaInfo {
        let table = self.table
        var attempt = 0
        while true {
            do {
                return try await session.withConnection { conn throws(PGError) -> Result<OutboxSchemaInfo, RelayError> in
                    do throws(RelayError) { return .success(try SchemaCheck.check(conn, table: table)) } catch { return .failure(error) }
                }.get()
            } catch {
                let lost = (error as? PGError)?.isBrokenConnection ?? (error as? RelayError)?.connectionLost ?? false
                guard lost, attempt < Self.startupRetries else { throw error }
                attempt += 1
                logger.warning("database connection lost during start-up checks; retrying", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: UInt64(attempt) * 200_000_000)
            }
        }
    }

    private func makeProducer() throws(KafkaError) -> KafkaProducer {
        try nextProducer()()
    }

    /// How to build the next producer instance (a new generation, reporting into the stream);
    /// cheap to make here, while running it takes tens of milliseconds.
    private func nextProducer() throws(KafkaError) -> @Sendable () throws(KafkaError) -> KafkaProducer {
        guard let continuation = reportContinuation else {
            throw KafkaError(.client, message: "report stream missing")
        }
        producerGeneration += 1
        let generation = producerGeneration
        let kafka = configuration.kafkaConfiguration(clientId: "outbox-relay-\(replicaId)")
        return { () throws(KafkaError) in
            try KafkaProducer(configuration: kafka) { event in
                continuation.yield(ProducerEvent(generation: generation, event: event))
            }
        }
    }

    /// The first producer, built on a thread of its own (see `start`): awaited once, either
    /// taken or closed.
    private func startProducerCreation() -> Task<Result<KafkaProducer, KafkaError>, Never> {
        let build: Result<@Sendable () throws(KafkaError) -> KafkaProducer, KafkaError> = Result { () throws(KafkaError) in try nextProducer() }
        return Task.detached {
            await withCheckedContinuation { (c: CheckedContinuation<Result<KafkaProducer, KafkaError>, Never>) in
                let thread = Thread { c.resume(returning: build.flatMap { make in Result { () throws(KafkaError) in try make() } }) }
                thread.name = "kafka-create"
                thread.start()
            }
        }
    }

    /// An event tagged with the producer instance it came from; events of a replaced producer
    /// are ignored (its rows were already taken back).
    struct ProducerEvent: Sendable {
        let generation: Int
        let event: KafkaProducer.Event
    }
    private var producerGeneration = 0
    private var reportStream: AsyncStream<ProducerEvent>?
    private var reportContinuation: AsyncStream<ProducerEvent>.Continuation?

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
            self.terminate()
            await group.waitForAll()
        }
        await leave()
        if configuration.deadLetterTopic != nil, deadLetterSequence > 1 << 63 {
            // Dead-letter copies are not in the window (the table is the record), so drain()
            // did not wait for them: give them a moment to leave before the producer is closed.
            _ = producer?.flush(timeoutMilliseconds: Int32(min(configuration.shutdownTimeoutMillis, 2_000)))
        }
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
            claimLoopBeat = now
            if now < pausedUntil {
                await claimWake.wait(timeout: pausedUntil - now)
                continue
            }
            if !suspects.isEmpty {
                // Probe phase: one suspect at a time, alone in the producer.
                if probeSeq == nil, window.awaitingReport == 0, !recreating, let producer { probeNext(producer, now: now) }
                await claimWake.wait(timeout: poll)
                continue
            }
            if !retries.isEmpty, retries.anyDue(now: now) {
                // Keys with rows still awaiting their report stay held (see releaseDue).
                let busy = Set(window.unreported.compactMap { $0.row?.holdKey })
                if retries.releaseDue(now: now, busy: { busy.contains($0) }) != nil { cursor.rewind() }
            }
            let shards = leases.claimable(now: now)
            if shards != lastClaimable {
                if !Set(shards).isSubset(of: Set(lastClaimable)) { cursor.reset() }
                lastClaimable = shards
            }
            let room = window.rowRoom
            // Claim full batches: with rows still in flight, wait until half a batch fits rather
            // than issuing many small claims (statements per row matter to the database).
            let minimumRoom = window.isEmpty ? 1 : max(1, min(configuration.batchSize, window.maxRows) / 2)
            guard !shards.isEmpty, room >= minimumRoom, !recreating, let session = claimSession else {
                var wait = poll
                if let due = retries.nextDue { wait = max(0.001, min(wait, due - now)) }
                await claimWake.wait(timeout: wait)
                continue
            }
            let limit = min(configuration.batchSize, room)
            let request = cursor.nextRequest(limit: limit, inFlight: window.rowIds, inFlightAtMost: window.highestRowId)
            let queries = outbox
            let allShards = shards.count == leases.shardCount
            let batch: ClaimBatch
            do {
                batch = try await session.withConnection { conn throws(PGError) in
                    try queries.claim(conn, shards: shards, allShards: allShards, request: request)
                }
            } catch {
                logger.warning("claim failed; retrying", metadata: [LogKey.error: "\(error)"])
                if error.isConnectionLoss { resyncAfterConnectionLoss() }
                backOff()
                continue
            }
            stats.claims += 1
            failureStreak = 0  // the back-off grows with consecutive failures only
            if request.mode == .sweep { stats.sweeps += 1 }
            metrics.claimDuration.recordSeconds(monotonicSeconds() - now)
            metrics.batchRows.record(batch.rows.count)
            cursor.observe(request, snapshot: batch.snapshot, lastRowId: batch.rows.last?.id, rowCount: batch.rows.count)
            if request.generation != cursor.generation {
                // Rewound while this read was in flight (a producer re-created, a connection lost,
                // a probe settled): rows not in flight are to be read again, in order, by the new
                // generation's sweep — these too.
                stats.staleClaims += 1
                continue
            }
            produce(batch.rows)
            if !cursor.hasMore {
                // Idle: sleep until NOTIFY (every committing insert sends one), window room or the
                // poll timer. A late-committing row is in the next read's window: nothing to ripen.
                var wait = poll
                if let due = retries.nextDue { wait = max(0.001, min(wait, due - monotonicSeconds())) }
                await claimWake.wait(timeout: wait)
                // Rows committed one by one each send a NOTIFY: gather what arrives within a
                // millisecond into one claim instead of one claim per row.
                try? await Task.sleep(nanoseconds: Self.claimGatherNanoseconds)
            }
        }
    }

    private func produce(_ rows: [ClaimedRow]) {
        guard let producer, !recreating else {
            // Not produced now: read again once a producer is ready.
            if !rows.isEmpty { cursor.rewind() }
            return
        }
        let now = monotonicSeconds()
        let producible = leases.producibleMask(now: now)
        for row in rows {
            guard Int(row.shard) < producible.count, producible[Int(row.shard)] else {
                // Lease lapsed locally between claim and produce: read the row again later.
                cursor.rewind()
                continue
            }
            if row.notBeforeDelayMillis > 0 {
                // Delayed delivery: the row (and later rows of its key) wait until its not_before.
                retries.hold(row.holdKey, rowId: row.id, until: now + Double(row.notBeforeDelayMillis) / 1000)
                continue
            }
            if !retries.isEmpty, retries.isHeld(row.holdKey, rowId: row.id) {
                // An earlier row of this key waits for its retry: this one must not overtake it.
                // The hold's release rewinds the cursor to the held row, which re-reads this one.
                continue
            }
            if !retries.history.isEmpty, (retries.history[row.id]?.badRowStrikes ?? 0) > 0 {
                // Blamed before with its batch and read again after a retry: probe it alone.
                suspect(row)
                continue
            }
            let seq = window.admit(rowId: row.id, shard: row.shard, bytes: row.message.byteCount,
                                   createdAtMicros: row.createdAtMicros, row: row)
            do throws(KafkaError) {
                if let problem = row.unreadable {
                    // Refused before librdkafka, as exactly as its own refusals: dead-lettered at once.
                    throw KafkaError(.produce, errorCode: KafkaErrorCode.invalidArgument, message: problem)
                }
                try producer.produce(row.message, opaque: seq)
            } catch {
                stats.failed += 1
                // Refused synchronously: the message never reached librdkafka's queue.
                guard let entry = window.fail(seq) else { continue }
                failed(entry, error: error, persistence: .notPersisted, now: now)
            }
        }
    }

    /// Decides what happens to a row whose delivery failed (one place, by classification).
    private func failed(_ entry: InFlightWindow.Entry, error: KafkaError, persistence: DeliveryReport.Persistence, now: Double) {
        guard let row = entry.row else { return }
        if recreating, [KafkaErrorCode.purgeQueue, KafkaErrorCode.purgeInflight, KafkaErrorCode.fatal].contains(error.errorCode) {
            // Taken back from the producer being replaced: read again and re-sent in id order
            // by the new instance; not a failed attempt.
            cursor.rewind()
            return
        }
        let kind = FailureClass.classify(error, persistence: persistence)
        let counts: Bool
        switch kind {
        case .environment:
            counts = false
            stats.environmentFailures += 1
            // librdkafka caches a topic-level error until its next metadata refresh: ask again
            // (at most once a second per topic) so a fixed ACL or a created topic is seen soon.
            if (metadataRefreshedAt[row.message.topic] ?? -.infinity) + 1 < now {
                metadataRefreshedAt[row.message.topic] = now
                producer?.refreshMetadata(topic: row.message.topic)
            }
        case .badRow, .ambiguous:
            let previous = retries.history[row.id]
            // A repeated failure counts only if the topic delivered something since the last
            // one (otherwise it is the environment, e.g. a broker outage timing everything out).
            counts = previous.map { (topicLastSuccess[row.message.topic] ?? -.infinity) > $0.lastFailureAt } ?? true
        }
        let history = retries.recordFailure(rowId: row.id, counts: counts, badRow: kind == .badRow, now: now)
        metrics.deliveryFailed(code: error.name)
        var metadata: Logger.Metadata = [
            LogKey.rowId: "\(row.id)", LogKey.shard: "\(row.shard)", LogKey.topic: "\(row.message.topic)",
            LogKey.errorCode: "\(error.name)", LogKey.error: "\(error)", "outbox.failure_class": "\(kind.rawValue)",
        ]
        // A batch-level error can blame innocent rows once; a synchronous refusal is exact.
        let deadLetterReason: String?
        if kind == .badRow && (history.badRowStrikes >= 2 || error.code == .produce) {
            deadLetterReason = "bad row: \(error.message)"
        } else if history.countedAttempts >= configuration.maxAttempts {
            deadLetterReason = "gave up after \(history.countedAttempts) attempts: \(error.message)"
        } else {
            deadLetterReason = nil
        }
        if let reason = deadLetterReason {
            let seq = window.admit(rowId: row.id, shard: row.shard, bytes: row.message.byteCount,
                                   createdAtMicros: row.createdAtMicros, row: row)
            _ = window.acknowledge(seq)
            pendingDeadLetters[seq] = (reason, error.name)
            deleteWake.signal()
            logger.error("dead-lettering row", metadata: metadata)
            return
        }
        if kind == .badRow {
            // A batch-level refusal blames every row of the batch: produce this one alone next.
            suspect(row)
            pendingAttempts.append(([row.id], "\(error.name): \(error.message)"))
            deleteWake.signal()
            logger.warning("the broker refused this row's batch; the row will be produced alone to find the culprit", metadata: metadata)
            return
        }
        let attempt = max(history.countedAttempts, 1) + (kind == .environment ? Int(min(stats.environmentFailures, 8)) : 0)
        let base = Double(configuration.retryBackoffMillis) / 1000
        let cap = Double(configuration.retryBackoffMaxMillis) / 1000
        let delay = min(cap, base * pow(2, Double(min(attempt - 1, 30)))) * Double.random(in: 0.8...1.2)
        retries.hold(row.holdKey, rowId: row.id, until: now + delay)
        metrics.retried(topic: row.message.topic)
        pendingAttempts.append(([row.id], "\(error.name): \(error.message)"))
        deleteWake.signal()
        metadata["outbox.retry_in_ms"] = "\(Int(delay * 1000))"
        logger.warning("delivery failed; the row stays in the outbox and is retried", metadata: metadata)
    }

    /// Marks `row` for a solo probe; its key (from this row on) is held until the probe settles.
    private func suspect(_ row: ClaimedRow) {
        suspects[row.id] = row
        retries.hold(row.holdKey, rowId: row.id, until: .infinity)
        claimWake.signal()
    }

    /// Produces the lowest suspect alone (the caller checked nothing else is awaiting a report).
    private func probeNext(_ producer: KafkaProducer, now: Double) {
        while let id = suspects.keys.min(), let row = suspects.removeValue(forKey: id) {
            guard leases.producibleEpoch(row.shard, now: now) != nil else {
                // No longer ours: the shard's owner reads it again.
                settleProbe(row)
                continue
            }
            let seq = window.admit(rowId: row.id, shard: row.shard, bytes: row.message.byteCount,
                                   createdAtMicros: row.createdAtMicros, row: row)
            stats.probes += 1
            do {
                try producer.produce(row.message, opaque: seq)
                probeSeq = seq
                return
            } catch {
                stats.failed += 1
                guard let entry = window.fail(seq) else { continue }
                settleProbe(row)
                failed(entry, error: error, persistence: .notPersisted, now: now)
            }
        }
    }

    /// A probe settled (or was dropped): release its key's hold (keeping it for other suspects
    /// of the key) and read the key's later rows again.
    private func settleProbe(_ row: ClaimedRow) {
        let key = row.holdKey
        retries.clear(key)
        for other in suspects.values where other.holdKey == key {
            retries.hold(key, rowId: other.id, until: .infinity)
        }
        cursor.rewind()
        claimWake.signal()
    }

    /// After a lost connection the relay cannot be sure what the database kept: a crash with
    /// `synchronous_commit = off` can bring back rows whose DELETE had been reported committed.
    /// Read everything again from the start (rows in flight excluded); a resurrected row is
    /// re-sent — a bounded duplicate — rather than left behind the cursor for ever.
    private func resyncAfterConnectionLoss() {
        cursor.reset()
    }

    private func backOff() {
        failureStreak += 1
        let base = Double(configuration.retryBackoffMillis) / 1000
        let delay = min(Self.maxRetryBackoff, base * pow(2, Double(min(failureStreak - 1, 20))))
        pausedUntil = monotonicSeconds() + delay * Double.random(in: 0.8...1.2)
    }

    // MARK: Delivery reports

    private func reportLoop(_ stream: AsyncStream<ProducerEvent>) async {
        for await tagged in stream {
            guard tagged.generation == producerGeneration else { continue }
            switch tagged.event {
            case .deliveryReports(let reports):
                handle(reports)
            case .error(let error):
                if error.isFatal {
                    logger.error("fatal Kafka producer error", metadata: [LogKey.error: "\(error)"])
                    scheduleRecreation(reason: "fatal error: \(error)")
                } else {
                    logger.warning("Kafka client error", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
    }

    private func handle(_ reports: [DeliveryReport]) {
        let now = monotonicSeconds()
        let wallMicros = Int64(Date().timeIntervalSince1970 * 1_000_000)
        var producedByTopic: [String: Int] = [:]
        defer { for (topic, n) in producedByTopic { metrics.produced(topic: topic, count: n) } }
        var anyFailure = false
        let tracking = !retries.history.isEmpty
        for report in reports {
            if let seq = probeSeq, report.opaque == seq {
                probeSeq = nil
                if let row = window.entry(seq)?.row { settleProbe(row) }
            }
            if let error = report.error {
                guard let entry = window.fail(report.opaque) else { continue }
                stats.failed += 1
                anyFailure = true
                let fencing = [KafkaErrorCode.producerFenced, KafkaErrorCode.invalidProducerEpoch,
                               KafkaErrorCode.unknownProducerId, KafkaErrorCode.outOfOrderSequence].contains(error.errorCode)
                consecutiveFencing = fencing ? consecutiveFencing + 1 : 0
                failed(entry, error: error, persistence: report.persistence, now: now)
            } else if let entry = window.acknowledge(report.opaque) {
                stats.delivered += 1
                consecutiveFencing = 0
                lastSuccessAt = now
                pendingDeletes.append(report.opaque)
                if let row = entry.row {
                    producedByTopic[row.message.topic, default: 0] += 1
                    if configuration.recordsDeliveries {
                        ledger[row.id] = DeliveryPlace(topic: row.message.topic, partition: report.partition, offset: report.offset)
                    }
                    metrics.commitToAck.recordMicroseconds(max(0, wallMicros - row.createdAtMicros))
                }
                if tracking, let row = entry.row {
                    topicLastSuccess[row.message.topic] = now
                    retries.forget(rowId: row.id)
                }
            }
        }
        if !pendingDeletes.isEmpty { deleteWake.signal() }
        if anyFailure {
            claimWake.signal()
            windowWake.signal()
        }
        if consecutiveFencing >= Self.fencingStormThreshold, !recreationScheduled {
            consecutiveFencing = 0
            scheduleRecreation(reason: "producer fenced repeatedly")
        }
    }

    static let fencingStormThreshold = 10
    /// Start-up checks retried this many times when an established connection breaks.
    static let startupRetries = 5
    /// Longest a DELETE waits for more delivery reports to fill its batch.
    static let deleteGatherSeconds = 0.005
    /// How long a producer re-creation waits for the old instance's last reports.
    static let recreationReportWait = 2.0

    /// Replaces the producer: after a fatal error, a fencing storm, or when the watchdog sees
    /// outstanding messages without any report. The old instance's outstanding messages are
    /// purged and their reports taken for a moment — a refused batch's own report names the
    /// rows to probe alone — and whatever is still unreported is then written off; every such
    /// row is read again and re-sent in id order by the new instance.
    private func scheduleRecreation(reason: String) {
        guard !recreationScheduled, !recreating else { return }
        recreationScheduled = true
        Task { await self.recreateProducer(reason: reason) }
    }

    private func recreateProducer(reason: String) async {
        recreationScheduled = false
        guard !recreating, !terminated, let old = producer else { return }
        recreating = true
        logger.error("re-creating the Kafka producer", metadata: ["outbox.reason": "\(reason)"])
        // The old instance must not send anything more (a zombie within the process): purge
        // what it holds and take the reports that brings, for a bounded moment.
        old.purgeAll()
        let deadline = monotonicSeconds() + Self.recreationReportWait
        while window.awaitingReport > 0, !terminated {
            let left = deadline - monotonicSeconds()
            if left <= 0 { break }
            await windowWake.wait(timeout: left)
        }
        // Then let it shut down on a thread of its own: rd_kafka_destroy can block for a socket
        // timeout when a broker is wedged, and nothing needs to wait for it.
        producer = nil
        Thread { old.close() }.start()
        if let seq = probeSeq, let row = window.entry(seq)?.row {
            // The probe's producer is gone: probe the row again with the new one.
            suspects[row.id] = row
        }
        probeSeq = nil
        let lost = window.failAllUnreported()
        if !lost.isEmpty { cursor.rewind() }
        stats.producerRecreations += 1
        metrics.producerRecreations.increment()
        while !terminated {
            do {
                producer = try makeProducer()
                break
            } catch {
                logger.error("cannot create the Kafka producer; retrying", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: 1_000_000_000)
            }
        }
        lastSuccessAt = monotonicSeconds()
        recreating = false
        claimWake.signal()
        windowWake.signal()
    }

    // MARK: Delete

    private func deleteLoop() async {
        while true {
            if !pendingDeadLetters.isEmpty || !pendingAttempts.isEmpty {
                await runDeadLettersAndAttempts()
            }
            if pendingDeletes.isEmpty {
                if terminated && pendingDeadLetters.isEmpty { return }
                await deleteWake.wait(timeout: 1)
                continue
            }
            // While enough reports to fill a whole batch are still on their way, gather them
            // (for a few milliseconds at most) into one DELETE per batch. Only a draining backlog
            // has that many outstanding; a steady trickle of rows is deleted at once.
            let gatherUntil = monotonicSeconds() + Self.deleteGatherSeconds
            while !terminated, pendingDeletes.count < configuration.batchSize,
                  window.awaitingReport >= configuration.batchSize - pendingDeletes.count {
                let left = gatherUntil - monotonicSeconds()
                if left <= 0 { break }
                await deleteWake.wait(timeout: left)
            }
            let seqs = pendingDeletes
            pendingDeletes.removeAll(keepingCapacity: true)
            let ids = seqs.compactMap { window.entry($0)?.rowId }
            let epochs = leases.epochArray()
            let owner = replicaId
            let queries = outbox
            guard let session = deleteSession else { return }
            do {
                let started = monotonicSeconds()
                let deleted = try await session.withConnection { conn throws(PGError) in
                    try queries.delete(conn, ids: ids, owner: owner, epochs: epochs)
                }
                metrics.deleteDuration.recordSeconds(monotonicSeconds() - started)
                metrics.rowsDeleted.increment(by: deleted)
                if deleted < ids.count { metrics.lostLeaseRows.increment(by: ids.count - deleted) }
                stats.deleted += deleted
                if deleted < ids.count {
                    stats.lostLeaseRows += ids.count - deleted
                    logger.warning("lease lost: acknowledged rows were left for the shard's new owner (they may be sent again)", metadata: [
                        "outbox.rows": "\(ids.count - deleted)",
                    ])
                }
                let drainingBefore = Set(leases.leases.filter { $0.value.phase == .draining }.keys)
                for s in seqs { window.settle(s) }
                metrics.inFlightRows.record(window.rows)
                metrics.inFlightBytes.record(window.bytes)
                if drainingBefore.contains(where: { window.inFlight(shard: $0) == 0 }) { leaseWake.signal() }
                claimWake.signal()
                windowWake.signal()
            } catch {
                // The DELETE is idempotent: keep the ids and try again.
                pendingDeletes.insert(contentsOf: seqs, at: 0)
                if error.isConnectionLoss { resyncAfterConnectionLoss() }
                logger.warning("delete failed; retrying", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: 200_000_000)
                if terminated && stopFlag.isSet && deleteAttemptsExhausted() { return }
            }
        }
    }

    private func runDeadLettersAndAttempts() async {
        guard let session = deleteSession else { return }
        let attempts = pendingAttempts
        pendingAttempts.removeAll()
        let queries = deadLetters
        for (ids, error) in attempts {
            do {
                try await session.withConnection { conn throws(PGError) in try queries.recordAttempt(conn, rowIds: ids, error: error) }
            } catch {
                logger.warning("cannot record a failed attempt", metadata: [LogKey.error: "\(error)"])
            }
        }
        for (seq, info) in pendingDeadLetters {
            guard let entry = window.entry(seq) else { pendingDeadLetters[seq] = nil; continue }
            let epoch = leases.epochArray()[Int(entry.shard)]
            let owner = replicaId
            do {
                let moved = try await session.withConnection { conn throws(PGError) in
                    try queries.deadLetter(conn, rowId: entry.rowId, owner: owner, epoch: epoch, reason: info.reason, errorCode: info.code)
                }
                pendingDeadLetters[seq] = nil
                window.settle(seq)
                retries.forget(rowId: entry.rowId)
                if moved {
                    stats.deadLettered += 1
                    metrics.deadLettered(topic: entry.row?.message.topic ?? "")
                    logger.error("row dead-lettered", metadata: [
                        LogKey.rowId: "\(entry.rowId)", LogKey.topic: "\(entry.row?.message.topic ?? "")",
                        "outbox.reason": "\(info.reason)",
                    ])
                    if let topic = configuration.deadLetterTopic, let row = entry.row { produceDeadLetterCopy(row, topic: topic, reason: info.reason) }
                } else {
                    stats.lostLeaseRows += 1
                    logger.warning("lease lost before the row could be dead-lettered; its new owner decides", metadata: [LogKey.rowId: "\(entry.rowId)"])
                }
                windowWake.signal()
                claimWake.signal()
            } catch {
                logger.warning("cannot dead-letter row yet; retrying", metadata: [LogKey.rowId: "\(entry.rowId)", LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: 200_000_000)
                if terminated && deleteAttemptsExhausted() { return }
            }
        }
    }

    /// Best effort: the dead-letter table is the record; the topic is a copy for consumers.
    private func produceDeadLetterCopy(_ row: ClaimedRow, topic: String, reason: String) {
        var message = KafkaMessage(topic: topic, key: row.message.keyBytes, value: row.message.valueBytes,
                                   headers: row.message.headerList)
        message.addHeader(name: "outbox-dead-letter-reason", value: String(reason.prefix(500)))
        message.addHeader(name: "outbox-original-topic", value: row.message.topic)
        deadLetterSequence += 1
        do { try producer?.produce(message, opaque: deadLetterSequence) } catch {
            logger.warning("cannot produce to the dead-letter topic", metadata: [LogKey.rowId: "\(row.id)", LogKey.error: "\(error)"])
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
            leaseLoopBeat = monotonicSeconds()
            await leaseTick(announce: first)
            await sampleBacklog()
            probeBroker()
            first = false
            await leaseWake.wait(timeout: interval)
        }
    }

    private func leaseTick(announce: Bool) async {
        guard let session = leaseSession else { return }
        // Watchdog: rows outstanding or waiting for a retry, yet no delivery succeeded for too
        // long (e.g. a producer wedged by fencing that librdkafka does not report as fatal).
        if lastSuccessAt == 0 { lastSuccessAt = monotonicSeconds() }
        let silentFor = monotonicSeconds() - lastSuccessAt
        if window.awaitingReport > 0 || !retries.isEmpty, silentFor * 1000 > Double(configuration.effectiveWatchdogMillis) {
            scheduleRecreation(reason: "no delivery succeeded for \(Int(silentFor)) s with rows outstanding")
        }
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
            lastLeaseOK = monotonicSeconds()
            lastDatabaseError = nil
            metrics.leaseDuration.recordSeconds(lastLeaseOK - sentAt)
            metrics.liveReplicas.record(live.count)
            // Shards acquired while the renewal ran are not in `held`; keep them.
            let lost = leases.renewed(renewed.map { ($0.shard, $0.epoch) } + leases.leases.filter { !held.contains($0.key) }.map { ($0.key, $0.value.epoch) },
                                      sentAt: sentAt, duration: duration, margin: margin)
            if !lost.isEmpty {
                logger.warning("lost shard leases to another replica", metadata: ["outbox.shards": "\(lost)"])
            }
            if stopFlag.isSet { return }
            let desired = ShardAssignment.shards(for: replica, among: live, shardCount: shardCount)
            if desired.count != desiredShardCount {
                desiredShardCount = desired.count
                desiredSince = monotonicSeconds()
            }
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
            // A shard this replica lost (paused past its lease, say) may still have rows of that
            // old tenure awaiting reports here. Take it again only once they are settled: until
            // then claims would skip them (they are in the window) and read the key's later rows,
            // which a late failure of theirs would then have overtaken.
            let acquire = plan.acquire.filter { window.inFlight(shard: $0) == 0 }
            if !acquire.isEmpty {
                let acquireAt = monotonicSeconds()
                let got = try await session.withConnection { conn throws(PGError) in
                    try queries.acquire(conn, replica: replica, shards: acquire, leaseMillis: leaseMillis)
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
            metrics.shardsHeld.record(leases.heldShards.count)
        } catch {
            lastDatabaseError = "\(error)"
            logger.warning("lease heartbeat failed", metadata: [LogKey.error: "\(error)"])
        }
    }
}

extension Relay {
    /// Backlog and oldest-row age for the metrics, once per heartbeat.
    private func sampleBacklog() async {
        guard let session = leaseSession, !terminated else { return }
        let queries = backlog
        do {
            let (rows, age) = try await session.withConnection { conn throws(PGError) in try queries.sample(conn) }
            metrics.backlogRows.record(rows)
            metrics.oldestRowAge.record(age)
        } catch {
            lastDatabaseError = "\(error)"
        }
    }

    /// Checks, off the actor, that a broker answers; the result feeds readiness.
    private func probeBroker() {
        guard !probing, let producer else { return }
        probing = true
        let timeout = Int32(min(2_000, max(200, configuration.effectiveHeartbeatMillis)))
        Task {
            let error = await producer.probe(timeoutMilliseconds: timeout)
            self.brokerProbed(error)
        }
    }

    private func brokerProbed(_ error: KafkaError?) {
        probing = false
        brokerError = error.map { "no broker answered: \($0)" }
    }

    /// Liveness and readiness, with the reason for each check.
    public func health() -> RelayHealth {
        let now = monotonicSeconds()
        let poll = Double(configuration.pollIntervalMillis) / 1000
        let heartbeat = Double(configuration.effectiveHeartbeatMillis) / 1000
        let alive = !terminated && claimLoopBeat > 0 && now - claimLoopBeat < poll + 60 && now - leaseLoopBeat < heartbeat + 60
        let dbFresh = lastLeaseOK > 0 && now - lastLeaseOK < max(3 * heartbeat, 3)
        let database = RelayHealth.Check(
            ok: dbFresh,
            detail: dbFresh ? "lease heartbeat \(String(format: "%.1f", now - lastLeaseOK)) s ago"
                : "no successful lease heartbeat\(lastLeaseOK > 0 ? " for \(Int(now - lastLeaseOK)) s" : " yet")\(lastDatabaseError.map { ": \($0)" } ?? "")")
        let kafka = RelayHealth.Check(ok: brokerError == nil, detail: brokerError ?? "a broker answered")
        let held = leases.heldShards.count
        let waiting = now - desiredSince < Double(configuration.leaseDurationMillis) / 1000 + 2 * heartbeat
        let shardsOK = dbFresh && (held >= desiredShardCount || waiting)
        let shards = RelayHealth.Check(
            ok: shardsOK,
            detail: "holds \(held) of \(desiredShardCount) assigned shards\(held < desiredShardCount && waiting ? " (acquiring)" : "")")
        let stopping = RelayHealth.Check(ok: !stopFlag.isSet, detail: stopFlag.isSet ? "shutting down" : "running")
        let checks = ["database": database, "kafka": kafka, "shards": shards, "lifecycle": stopping]
        let ready = alive && checks.values.allSatisfy(\.ok)
        metrics.ready.record(ready ? 1 : 0)
        return RelayHealth(alive: alive, ready: ready, checks: checks, replica: replicaId)
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
    public static let errorCode = "kafka.error_code"
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
