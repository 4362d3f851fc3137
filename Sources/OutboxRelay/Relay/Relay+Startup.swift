import Foundation
import Kafka
import Logging
import PGClient

/// Start-up: connections (the claim session LISTENs), schema checks, the first producer.
extension Relay {
    // MARK: Start-up

    /// Connects, checks the schema and the producer configuration. Throws a ``RelayError`` naming
    /// what is wrong (unreachable database, missing table — suggesting `migrate` —, bad property).
    public func start() async throws(RelayError) {
        guard claimSession == nil else { return }
        try Librdkafka.checkVersionForRelay()
        let timeout = configuration.statementTimeoutMillis
        // No JIT on the relay's sessions: its statements touch at most a page of rows, but a
        // statement whose only plan is a disabled sequential scan (the claim session runs with
        // enable_seqscan = off, and the tiny meta and lease tables have no other plan) is costed
        // above jit_above_cost, and PostgreSQL then spends 10–110 ms compiling it. At start-up
        // that was most of the time to the first delete (about 0.13 s of PostgreSQL CPU).
        let setup: @Sendable (PGConnection) throws(PGError) -> Void = { conn throws(PGError) in
            try conn.executeScript("SET statement_timeout = \(timeout); SET lock_timeout = \(timeout); SET idle_in_transaction_session_timeout = \(timeout * 2); SET jit = off")
        }
        let app = "outbox-relay"
        let url = configuration.databaseURL
        // rd_kafka_new spends tens of milliseconds in one-time library set-up (OpenSSL and SASL
        // plug-ins, even for plaintext): create the producer on its own thread while the
        // database is connected and checked, and it starts fetching its producer id meanwhile.
        reportsOpen = true
        let pendingProducer = startProducerCreation()
        // The claim session runs only the claim statements, whose plans are prepared once and
        // reused: a plan cached while the table was small must not become a sequential scan of a
        // large backlog (a window's rows are found on the txid index, a sweep walks the key).
        // Its only writes are the DELETEs of acknowledged rows that ride along with a claim (see
        // Relay.takeFusableDeletes): they commit without waiting for the WAL flush, so a claim
        // (and the produce after it) never waits for the disk. Such a DELETE lost in a database
        // crash brings its rows back, and they are sent again: a duplicate, never a loss. The
        // WAL writer flushes it within 3 × wal_writer_delay (600 ms by default), and any later
        // durable commit (another session's, a lease renewal) flushes it with itself.
        // Generic plans: the plain claims switched to them after five executions anyway, and
        // with the claims that carry a DELETE's id array forced onto them too the relay's
        // backends spent 0.18 instead of 0.27 ms per row at 500 rows/s (two A/B rounds).
        // The claim session also LISTENs for the table's notifications, and sleeps on them itself
        // when caught up (see Relay.claimLoop): a notification wakes the thread that claims.
        // A replica that holds no shard stops listening in the claim loop (followRowsChannel).
        let channel = table.channel
        let router = notificationRouter
        let fresh = claimSessionFresh
        let claimSetup: @Sendable (PGConnection) throws(PGError) -> Void = { conn throws(PGError) in
            try setup(conn)
            try conn.executeScript("SET enable_seqscan = off; SET synchronous_commit = off; SET plan_cache_mode = force_generic_plan")
            do throws(PGError) {
                try conn.executeScript("LISTEN \(quoteIdentifier(channel))")
            } catch {
                // A hot standby refuses LISTEN; what can run there still does, woken by its timers.
                if error.isConnectionLoss { throw error }
            }
            fresh.set()
            // A new connection: notifications may have been missed meanwhile.
            router.claimWake.signal()
            router.leaseWake.signal()
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
        notificationGate = info.notificationGate
        replicaBusy = info.replicaBusy
        if !info.replicaBusy, configuration.shardSpread == .load {
            logger.notice("table \(table)'s replicas table has no busy column: the shards are spread evenly (run `outbox-relay migrate` of this version for --shard-spread load)")
        }
        let poll = Double(configuration.pollIntervalMillis) / 1000
        wakeMode = WakeMode(busyPoll: Double(configuration.effectiveBusyPollMillis) / 1000, declaration: max(2 * poll, 0.2))
        pacer = ClaimPacer(target: configuration.effectiveLatencyTargetMillis / 1000, busyPoll: wakeMode.busyPoll)
        if !info.notificationGate {
            logger.notice("table \(table) has no notification gate: every insert sends a NOTIFY (run `outbox-relay migrate` of this version)")
        }
        leases = LeaseTable(shardCount: info.shardCount, deliveryBound: configuration.deliveryBoundSeconds)
        claimSession = claim
        // The delete session's statements have one right plan whatever their parameters (see
        // OutboxQueries.deleteSQL): plan them once.
        let deleteSetup: @Sendable (PGConnection) throws(PGError) -> Void = { conn throws(PGError) in
            try setup(conn)
            try conn.executeScript("SET plan_cache_mode = force_generic_plan")
        }
        deleteSession = PGSession(url: url, applicationName: app, label: "delete", setup: deleteSetup)
        leaseSession = PGSession(url: url, applicationName: app, label: "lease", setup: setup)

        do {
            producer = try await pendingProducer.value.get()
        } catch {
            await closeSessions()
            throw RelayError(kafka: error, context: "cannot create the Kafka producer")
        }
        logger.info("relay started", metadata: [
            "outbox.shards": .stringConvertible(info.shardCount), "kafka.librdkafka": "\(Librdkafka.versionString)",
        ])
    }

    /// The start-up checks, retried when an established connection breaks under them (a
    /// terminated backend, a restart); a database that cannot be reached at all is refused at once.
    func checkSchema(_ session: PGSession) async throws -> OutboxSchemaInfo {
        let table = self.table
        var attempt = 0
        while true {
            do {
                return try await session.withConnection { conn throws(PGError) -> Result<OutboxSchemaInfo, RelayError> in
                    do throws(RelayError) { return .success(try SchemaCheck.check(conn, table: table)) } catch { return .failure(error) }
                }.get()
            } catch {
                // A broken connection or a momentary condition (a statement timing out on a loaded
                // server, too many connections) is not a bad configuration: retry those.
                let pg = error as? PGError, relayError = error as? RelayError
                let retriable = (pg.map { $0.isBrokenConnection || $0.isTransient })
                    ?? relayError.map { $0.connectionLost || $0.transient } ?? false
                guard retriable, attempt < Self.startupRetries else { throw error }
                attempt += 1
                logger.warning("start-up checks failed for a passing reason; retrying", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: UInt64(min(attempt, 5)) * 200_000_000)
            }
        }
    }

    func makeProducer() throws(KafkaError) -> KafkaProducer {
        try nextProducer()()
    }

    /// How to build the next producer instance (waking the report loop when it has events);
    /// cheap to make here, while running it takes tens of milliseconds.
    func nextProducer() throws(KafkaError) -> @Sendable () throws(KafkaError) -> KafkaProducer {
        let kafka = configuration.kafkaConfiguration(clientId: "outbox-relay-\(replicaId)")
        let deferral = reportDeferral
        let ackLatency = self.ackLatency
        return { () throws(KafkaError) in
            try KafkaProducer(configuration: kafka, ackLatency: ackLatency) { deferral.eventsReady() }
        }
    }

    /// The first producer, built on a thread of its own (see `start`): awaited once, either
    /// taken or closed.
    func startProducerCreation() -> Task<Result<KafkaProducer, KafkaError>, Never> {
        let build: Result<@Sendable () throws(KafkaError) -> KafkaProducer, KafkaError> = Result { () throws(KafkaError) in try nextProducer() }
        return Task.detached {
            await withCheckedContinuation { (c: CheckedContinuation<Result<KafkaProducer, KafkaError>, Never>) in
                let thread = Thread { c.resume(returning: build.flatMap { make in Result { () throws(KafkaError) in try make() } }) }
                thread.name = "kafka-create"
                thread.start()
            }
        }
    }
}
