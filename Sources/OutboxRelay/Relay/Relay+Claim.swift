import Foundation
import Kafka
import Logging
import PGClient

/// Claiming and producing: the claim loop, the produce call with the ownership rule, solo probes.
extension Relay {
    // MARK: Claim and produce

    func claimLoop() async {
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
            claimWaitsForRoom = room < minimumRoom
            // A busy poll's pause, or the wait for a notification, spent on the claim session's
            // thread just before the claim (see waitWhenCaughtUp).
            let pause = pollPause
            let notified = notifiedWait
            pollPause = 0
            notifiedWait = 0
            let batch: ClaimBatch
            let request: ClaimCursor.Request
            let fused: (seqs: [UInt64], delete: OutboxQueries.FusedDelete)?
            let began: Double
            if let prefetched = prefetchedClaim {
                // A backlog's next page, read while the previous one was produced (see
                // prefetchClaim): as a claim that started earlier, it is settled here.
                prefetchedClaim = nil
                stats.prefetchedClaims += 1
                (request, fused, began) = (prefetched.request, prefetched.fused, prefetched.began)
                switch await prefetched.task.value {
                case .success(let read): batch = read
                case .failure(let error):
                    claimFailed(error, fused: fused?.seqs)
                    continue
                }
            } else {
                guard !shards.isEmpty, room >= minimumRoom, !recreating, let session = claimSession else {
                    var wait = poll
                    if let due = retries.nextDue { wait = max(0.001, min(wait, due - now)) }
                    if shards.isEmpty, !recreating, let session = claimSession {
                        // Holding nothing: no claim reads the session's notifications, and a
                        // rebalance among them is what this replica waits for.
                        await waitOnClaimSession(session, timeout: wait)
                    } else {
                        await claimWake.wait(timeout: wait)
                    }
                    continue
                }
                let limit = window.claimLimit(batchSize: configuration.batchSize, averageRowBytes: averageRowBytes)
                request = cursor.nextRequest(limit: limit, inFlight: window.rowIds, inFlightAtMost: window.highestRowId)
                fused = takeFusableDeletes()
                let router = notificationRouter
                let claim = claimStatement(shards: shards, request: request, deleting: fused?.delete)
                do {
                    if notified > 0 {
                        // Sleep until notified on the claim session's own thread, which then claims at
                        // once: no listener thread and no pool thread woken between the NOTIFY and
                        // the claim. A wake-up for another reason (room, a lease, a retry, shutdown)
                        // interrupts the wait; the loop then starts over.
                        // Deletes carried by this claim wait for it no longer than they would for
                        // the delete loop: with none, the claim runs after that moment anyway.
                        let wait = fused == nil ? notified : min(notified, Self.fusedDeleteWaitSeconds)
                        if claimWake.armInterrupt() {
                            batch = try await session.withConnection(claim)
                        } else {
                            let (outcome, armed) = try await session.waitThenRun(
                                timeout: wait, interrupt: claimWake.interrupt!, accept: { router.accept($0) }, claim)
                            guard outcome != .interrupted, let armed else {
                                if let fused { restoreFusableDeletes(fused.seqs) }
                                continue
                            }
                            batch = armed
                        }
                    } else {
                        batch = try await session.withConnection(after: pause, claim)
                    }
                } catch {
                    claimFailed(error, fused: fused?.seqs)
                    continue
                }
                began = notified > 0 ? monotonicSeconds() : now + pause  // about when the claim ran
            }
            stats.claims += 1
            if notificationGate { wakeMode.observe(snapshot: batch.snapshot) }
            if let fused, let deleted = batch.deleted {
                stats.fusedDeletes += 1
                settleDeleted(fused.seqs, requested: fused.delete.ids.count, deleted: deleted, seconds: monotonicSeconds() - began)
            }
            if let dbNow = batch.databaseNowMicros {
                // Database clock − this host's clock, for latencies measured from created_at (a
                // database timestamp): a relay host whose clock is off must not report the offset.
                databaseClockOffsetMicros = dbNow - wallClockMicros()
            }
            if !batch.rows.isEmpty {
                // Average message size of recent claims (bytes of key, value and headers): what
                // the next claim's row limit is sized by.
                let claimed = Double(batch.rows.reduce(0) { $0 + $1.message.byteCount }) / Double(batch.rows.count)
                averageRowBytes = averageRowBytes.map { 0.7 * $0 + 0.3 * claimed } ?? claimed
            }
            failureStreak = 0  // the back-off grows with consecutive failures only
            if request.mode == .sweep { stats.sweeps += 1 }
            metrics.claimDuration.recordSeconds(monotonicSeconds() - began)
            metrics.batchRows.record(batch.rows.count)
            cursor.observe(request, snapshot: batch.snapshot, lastRowId: batch.rows.last?.id, rowCount: batch.rows.count)
            if request.generation != cursor.generation {
                // Rewound while this read was in flight (a producer re-created, a connection lost,
                // a probe settled): rows not in flight are to be read again, in order, by the new
                // generation's sweep — these too.
                stats.staleClaims += 1
                continue
            }
            if cursor.hasMore { prefetchClaim(after: batch.rows, shards: shards) }
            produce(batch.rows)
            claimCaughtUp = !cursor.hasMore
            if !cursor.hasMore, let session = claimSession {
                await waitWhenCaughtUp(rows: batch.rows.count, poll: poll, session: session)
            }
        }
        await settlePrefetchedClaim()
    }

    /// The claim statement for `request`, carrying `deleting`'s DELETE if any. Notifications that
    /// come during the claim are read after it: one that would have woken the loop means a row
    /// may have committed after this claim's snapshot.
    func claimStatement(shards: [Int32], request: ClaimCursor.Request,
                        deleting: OutboxQueries.FusedDelete?) -> @Sendable (PGConnection) throws(PGError) -> ClaimBatch {
        let queries = outbox
        let allShards = shards.count == leases.shardCount
        let router = notificationRouter
        return { conn throws(PGError) in
            let batch = try queries.claim(conn, shards: shards, allShards: allShards, request: request, deleting: deleting)
            if try router.take(conn.drainNotifications()) { router.claimWake.signal() }
            return batch
        }
    }

    /// A claim that failed: deletes it carried wait again, a lost connection resyncs, back off.
    func claimFailed(_ error: PGError, fused seqs: [UInt64]?) {
        if let seqs { returnPendingDeletes(seqs) }
        logger.warning("claim failed; retrying", metadata: [LogKey.error: "\(error)"])
        if error.isConnectionLoss { resyncAfterConnectionLoss() }
        backOff()
    }

    /// Reading a backlog, starts the next claim on the claim session's thread before this batch
    /// is produced: the database reads the next page (and the session's thread decodes it) while
    /// the relay hands this one to librdkafka, instead of one after the other. The next request
    /// follows from the cursor as it is now: the batch's own rows are at or below its position,
    /// so the request reads none of them again. It reads only what fits beside them in the
    /// window. A rewind while it runs makes it stale, like any claim in flight; its rows are
    /// produced after this batch's, in read order.
    func prefetchClaim(after rows: [ClaimedRow], shards: [Int32]) {
        guard !shards.isEmpty, !recreating, suspects.isEmpty, !stopFlag.isSet, let session = claimSession else { return }
        let limit = window.claimLimit(batchSize: configuration.batchSize, averageRowBytes: averageRowBytes,
                                      reservingRows: rows.count, reservingBytes: rows.reduce(0) { $0 + $1.message.byteCount })
        guard limit >= max(1, min(configuration.batchSize, window.maxRows) / 2) else { return }
        let request = cursor.nextRequest(limit: limit, inFlight: window.rowIds, inFlightAtMost: window.highestRowId)
        let fused = takeFusableDeletes()
        let claim = claimStatement(shards: shards, request: request, deleting: fused?.delete)
        // Detached: a task of this actor would not start before the produce loop returns.
        let task = Task.detached { () async -> Result<ClaimBatch, PGError> in
            do throws(PGError) { return .success(try await session.withConnection(claim)) } catch { return .failure(error) }
        }
        prefetchedClaim = PrefetchedClaim(request: request, fused: fused, began: monotonicSeconds(), task: task)
    }

    /// At the claim loop's end: a prefetched claim's rows are left for the next reader, and the
    /// deletes it carried are settled.
    func settlePrefetchedClaim() async {
        guard let prefetched = prefetchedClaim else { return }
        prefetchedClaim = nil
        let outcome = await prefetched.task.value
        guard let fused = prefetched.fused else { return }
        if case .success(let batch) = outcome, let deleted = batch.deleted {
            settleDeleted(fused.seqs, requested: fused.delete.ids.count, deleted: deleted, seconds: monotonicSeconds() - prefetched.began)
        } else {
            returnPendingDeletes(fused.seqs)
        }
    }

    /// Caught up. With the notification gate: poll while busy, else declare the wait (the gate)
    /// and sleep until a notification (see ``WakeMode``). Without it (a table not migrated by this
    /// version, where every insert notifies): sleep until a notification or the poll timer.
    /// Either way a late-committing row is in the next read's window: nothing to ripen.
    func waitWhenCaughtUp(rows: Int, poll: Double, session: PGSession) async {
        let now = monotonicSeconds()
        guard notificationGate else {
            notifiedWait = waitUntilRetry(poll, now: now)
            return
        }
        wakeMode.observe(rows: rows, now: now)
        if wakeMode.mode == .polling, let opened = gateOpenedAt, let lease = leaseSession {
            // Switched to polling: close the gate this replica opened, so inserts stop notifying
            // now rather than when the declaration runs out. On the lease session, off the claim
            // loop's path: under a stream of inserts the setval took 35-85 ms (bench, durable).
            gateOpenedAt = nil
            let queries = outbox
            let logger = self.logger
            Task {
                do {
                    try await lease.withConnection { conn throws(PGError) in try queries.closeNotificationGate(conn, openedAt: opened) }
                } catch {
                    logger.debug("could not close the notification gate; it lapses by itself", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
        if wakeMode.mode == .polling {
            // The next claim is prepared now and sleeps busyPoll on the claim session's thread
            // before it runs: one thread woken per poll instead of the timer's, a pool thread's,
            // then the claim session's. Prepared 5 ms early, it is as a claim that took 5 ms
            // longer: rows leaving the window or a lease lost meanwhile are handled as they are
            // for a claim in flight (the produce call checks ownership, a rewind discards it).
            stats.busyPolls += 1
            pollPause = wakeMode.busyPoll
            return
        }
        if gateClosedElsewhere.take() {
            // Another replica closed the gate (it switched to polling) after this one declared it:
            // inserts stopped notifying. Open it again; the reopening's claim and follow-up find
            // what was inserted meanwhile. (Before, such a replica slept until its renewal — half
            // a declaration, up to the poll interval: 3 replicas at 1000 rows/s had rows waiting
            // 200-850 ms.)
            wakeMode.gateClosed()
            gateOpenedAt = nil
        }
        if wakeMode.needsDeclaration(now: now) {
            let queries = outbox
            let millis = Int64(wakeMode.declaration * 1000)
            let reopening = wakeMode.declarationReopens(now: now)
            do {
                let opened = try await session.withConnection { conn throws(PGError) in
                    try queries.openNotificationGate(conn, forMillis: millis, takingXid: reopening)
                }
                gateOpenedAt = opened.value
                wakeMode.declared(now: now, reopeningXid: opened.xid)
                stats.gateDeclarations += 1
            } catch {
                logger.warning("could not ask for notifications; polling", metadata: [LogKey.error: "\(error)"])
            }
            // Rows committed before the gate opened sent no notification: read once more first.
            if wakeMode.justReopened { return }
        }
        notifiedWait = waitUntilRetry(wakeMode.notifiedWait(poll: poll, now: now), now: now)
    }

    /// The wait for a notification before the next claim: `timeout`, or until the next retry
    /// hold's release. (No extra millisecond to gather what else commits: rows that come that
    /// close together switch the relay to polling, and below that rate the extra timer was a
    /// thread wake-up per row and the millisecond pure latency.)
    func waitUntilRetry(_ timeout: Double, now: Double) -> Double {
        guard let due = retries.nextDue else { return timeout }
        return max(0.001, min(timeout, due - now))
    }

    /// Waits on the claim session for a notification that wakes the claim loop, a wake-up, or
    /// `timeout` (a failure is waited out as a timeout: the next claim finds it).
    func waitOnClaimSession(_ session: PGSession, timeout: Double) async {
        if claimWake.armInterrupt() { return }
        let router = notificationRouter
        do {
            _ = try await session.wait(timeout: timeout, interrupt: claimWake.interrupt!, accept: { router.accept($0) })
        } catch {
            await claimWake.wait(timeout: timeout)
        }
    }

    func produce(_ rows: [ClaimedRow]) {
        guard let producer, !recreating else {
            // Not produced now: read again once a producer is ready.
            if !rows.isEmpty { cursor.rewind() }
            return
        }
        let deadlines = leases.produceDeadlines()
        let hook = configuration.beforeProduce
        for row in rows {
            hook?(row.id)
            // The ownership rule, checked at this produce call's own time: a pause (GC, SIGSTOP,
            // a throttled container) anywhere in this loop cannot outlast the lease unnoticed.
            let now = monotonicSeconds()
            guard Int(row.shard) < deadlines.count, now < deadlines[Int(row.shard)] else {
                // Not ours to produce now: read the row again (its shard's owner will).
                stats.ownershipRewinds += 1
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
                try producer.produce(tracedMessage(row, seq: seq), opaque: seq)
            } catch {
                stats.failed += 1
                endSpan(seq, error: error)
                // Refused synchronously: the message never reached librdkafka's queue.
                guard let entry = window.fail(seq) else { continue }
                failed(entry, error: error, persistence: .notPersisted, now: now)
            }
        }
    }

    /// Carries out the failure policy's decision for a row whose delivery failed.
    func failed(_ entry: InFlightWindow.Entry, error: KafkaError, persistence: DeliveryReport.Persistence, now: Double) {
        guard let row = entry.row else { return }
        let failure = FailurePolicy.Failure(error: error, persistence: persistence,
                                            producerWithdrawn: recreating || lifecycle.state == .draining)
        guard let kind = FailurePolicy.classify(failure) else {
            // Taken back from the producer being replaced (re-sent in id order by the new
            // instance), or purged at shutdown (left for the shard's next owner).
            cursor.rewind()
            return
        }
        if kind == .environment {
            stats.environmentFailures += 1
            // librdkafka caches a topic-level error until its next metadata refresh: ask again
            // (at most once a second per topic) so a fixed ACL or a created topic is seen soon.
            if (metadataRefreshedAt[row.message.topic] ?? -.infinity) + 1 < now {
                metadataRefreshedAt[row.message.topic] = now
                producer?.refreshMetadata(topic: row.message.topic)
            }
        }
        let counts = FailurePolicy.counts(kind, previousFailureAt: retries.history[row.id]?.lastFailureAt,
                                          topicLastSuccessAt: topicLastSuccess[row.message.topic])
        let history = retries.recordFailure(rowId: row.id, counts: counts, badRow: kind == .badRow, now: now)
        metrics.deliveryFailed(code: error.name)
        var metadata: Logger.Metadata = [
            LogKey.rowId: .stringConvertible(row.id), LogKey.shard: .stringConvertible(row.shard), LogKey.topic: "\(row.message.topic)",
            LogKey.errorCode: "\(error.name)", LogKey.error: "\(error)", "outbox.failure_class": "\(kind.rawValue)",
        ]
        switch failurePolicy.action(kind, error: error, history: history, environmentFailures: stats.environmentFailures,
                                    jitter: Double.random(in: 0.8...1.2)) {
        case .rewind:
            cursor.rewind()
        case .deadLetter(let reason):
            let seq = window.admit(rowId: row.id, shard: row.shard, bytes: row.message.byteCount,
                                   createdAtMicros: row.createdAtMicros, row: row)
            _ = window.acknowledge(seq)
            pendingDeadLetters[seq] = (reason, error.name)
            deleteWake.signal()
            logger.error("dead-lettering row", metadata: metadata)
        case .probeAlone:
            suspect(row)
            pendingAttempts.append(([row.id], "\(error.name): \(error.message)"))
            deleteWake.signal()
            logger.warning("the broker refused this row's batch; the row will be produced alone to find the culprit", metadata: metadata)
        case .retry(let delay):
            retries.hold(row.holdKey, rowId: row.id, until: now + delay)
            metrics.retried(topic: row.message.topic)
            pendingAttempts.append(([row.id], "\(error.name): \(error.message)"))
            deleteWake.signal()
            metadata["outbox.retry_in_ms"] = .stringConvertible(Int(delay * 1000))
            logger.warning("delivery failed; the row stays in the outbox and is retried", metadata: metadata)
        }
    }

    /// Marks `row` for a solo probe; its key (from this row on) is held until the probe settles.
    func suspect(_ row: ClaimedRow) {
        suspects[row.id] = row
        retries.hold(row.holdKey, rowId: row.id, until: .infinity)
        claimWake.signal()
    }

    /// Produces the lowest suspect alone (the caller checked nothing else is awaiting a report).
    func probeNext(_ producer: KafkaProducer, now: Double) {
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
                try producer.produce(tracedMessage(row, seq: seq), opaque: seq)
                probeSeq = seq
                return
            } catch {
                stats.failed += 1
                endSpan(seq, error: error)
                guard let entry = window.fail(seq) else { continue }
                settleProbe(row)
                failed(entry, error: error, persistence: .notPersisted, now: now)
            }
        }
    }

    /// A probe settled (or was dropped): release its key's hold (keeping it for other suspects
    /// of the key) and read the key's later rows again.
    func settleProbe(_ row: ClaimedRow) {
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
    ///
    /// The connection may also come back to a different server: a promoted standby. After an
    /// asynchronous failover its sequence hands out again ids the old primary had handed out, so
    /// an id in the window may name a new row this relay never produced. Rows in the window now
    /// are deleted only with their `created_at` checked too (``OutboxQueries/deleteChecked``),
    /// and when such a DELETE leaves some, the cursor is rewound: a new row with one of those ids
    /// was kept out of the reads while the old one was in flight. (Before, a retried DELETE by id
    /// could delete such a row undelivered: the failover-immediate fault case lost 3 rows once.)
    func resyncAfterConnectionLoss() {
        staleBelowSeq = window.nextSequenceNumber
        cursor.reset()
    }

    func backOff() {
        failureStreak += 1
        let base = Double(configuration.retryBackoffMillis) / 1000
        let delay = min(Self.maxRetryBackoff, base * pow(2, Double(min(failureStreak - 1, 20))))
        pausedUntil = monotonicSeconds() + delay * Double.random(in: 0.8...1.2)
    }
}
