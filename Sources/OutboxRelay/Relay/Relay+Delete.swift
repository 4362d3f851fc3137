import Foundation
import Kafka
import Logging
import PGClient

/// Lease-checked deletes, dead-lettering and recorded attempts.
extension Relay {
    // MARK: Delete

    func deleteLoop() async {
        while true {
            if !pendingDeadLetters.isEmpty || !pendingAttempts.isEmpty {
                await runDeadLettersAndAttempts()
            }
            if pendingDeletes.isEmpty {
                if terminated && pendingDeadLetters.isEmpty { return }
                await deleteWake.wait(timeout: 1)
                continue
            }
            if !deleteNeededNow {
                // Left for the claim loop's next claim to carry (see takeFusableDeletes), for a
                // moment: a trickle's next row comes sooner than that, a poll within 5 ms. The
                // report that made them pending armed a timer for the end of that moment.
                let left = (pendingDeletesSince ?? monotonicSeconds()) + Self.fusedDeleteWaitSeconds - monotonicSeconds()
                if left > 0 {
                    await deleteWake.wait(timeout: left)
                    continue
                }
            }
            // While enough reports to fill a whole batch are still on their way, gather them
            // (for a few milliseconds at most) into one DELETE per batch. Only a draining backlog
            // has that many outstanding. A trickle the claim loop polls for (rows faster than one
            // per 7.5 ms) is deleted once per poll with the reports of that poll's rows — one
            // durable commit for them instead of one per report; a slower trickle is deleted at
            // once (the row is already acknowledged: this only frees the window sooner).
            let busy = wakeMode.mode == .polling
            let gatherUntil = monotonicSeconds() + (busy ? wakeMode.busyPoll : Self.deleteGatherSeconds)
            while !terminated, pendingDeletes.count < configuration.batchSize,
                  busy ? window.awaitingReport > 0 : window.awaitingReport >= configuration.batchSize - pendingDeletes.count {
                let left = gatherUntil - monotonicSeconds()
                if left <= 0 { break }
                await deleteWake.wait(timeout: left)
            }
            if pendingDeletes.isEmpty { continue }  // carried by a claim meanwhile
            let seqs = pendingDeletes
            pendingDeletes.removeAll(keepingCapacity: true)
            pendingDeletesSince = nil
            cancelFusedDeleteTimer()
            guard deleteSession != nil else { return }
            // Rows acknowledged before a lost connection go first, in a DELETE of their own that
            // checks their created_at too (see resyncAfterConnectionLoss).
            let stale = hasStale(seqs) ? seqs.filter(isStale) : []
            let fresh = stale.isEmpty ? seqs : seqs.filter { !isStale($0) }
            for (group, checked) in [(stale, true), (fresh, false)] where !group.isEmpty {
                do {
                    try await deleteAcknowledged(group, checked: checked)
                } catch {
                    // The DELETE is idempotent: keep the ids (and those not tried yet) and try again.
                    returnPendingDeletes(checked ? seqs : fresh)
                    if error.isConnectionLoss { resyncAfterConnectionLoss() }
                    logger.warning("delete failed; retrying", metadata: [LogKey.error: "\(error)"])
                    try? await Task.sleep(nanoseconds: 200_000_000)
                    if terminated && stopFlag.isSet && deleteAttemptsExhausted() { return }
                    break
                }
            }
        }
    }

    /// Whether the row at window sequence `seq` was in the window at a lost connection.
    func isStale(_ seq: UInt64) -> Bool { seq < staleBelowSeq }

    func hasStale(_ seqs: [UInt64]) -> Bool {
        staleBelowSeq > 0 && seqs.contains(where: isStale)
    }

    /// Once every row that was in the window at the last lost connection has left it, deletes
    /// stop looking for such rows among theirs (a scan of each DELETE's rows until then).
    /// Called from the lease loop: a scan of the window every heartbeat, only while the mark is set.
    func forgetStaleMarkWhenClear() {
        if staleBelowSeq > 0, !window.holdsSequence(below: staleBelowSeq) { staleBelowSeq = 0 }
    }

    /// One lease-checked DELETE of the acknowledged rows `seqs`, settled. `checked`: rows
    /// acknowledged before a lost connection, deleted only with their created_at matching too
    /// (``OutboxQueries/deleteChecked``); when that leaves some, the cursor rewinds, because one
    /// may be a new row with a reused id, kept out of the reads meanwhile (or a lease was lost).
    func deleteAcknowledged(_ seqs: [UInt64], checked: Bool) async throws(PGError) {
        guard let session = deleteSession else { return }
        let entries = seqs.compactMap { window.entry($0) }
        let ids = entries.map(\.rowId)
        let created = checked ? entries.map(\.createdAtMicros) : []
        let epochs = leases.epochArray()
        let owner = replicaId
        let queries = outbox
        let started = monotonicSeconds()
        stats.deleteStatements += 1
        let deleted = try await session.withConnection { conn throws(PGError) in
            checked ? try queries.deleteChecked(conn, ids: ids, createdAtMicros: created, owner: owner, epochs: epochs)
                    : try queries.delete(conn, ids: ids, owner: owner, epochs: epochs)
        }
        settleDeleted(seqs, requested: ids.count, deleted: deleted, seconds: monotonicSeconds() - started)
        if checked, deleted < ids.count { cursor.rewind() }
    }

    /// Rows of `seqs` (`requested` ids) went through a lease-checked DELETE that deleted
    /// `deleted` of them: free their window slots; rows not deleted were on a lost lease.
    func settleDeleted(_ seqs: [UInt64], requested: Int, deleted: Int, seconds: Double) {
        deleteFailures.succeeded()
        let now = monotonicSeconds()
        metricsBatch.noteUpdate(now: now)
        metricsBatch.deleteSeconds.append(seconds)
        metricsBatch.rowsDeleted += deleted
        stats.deleted += deleted
        if deleted < requested {
            metrics.lostLeaseRows.increment(by: requested - deleted)
            stats.lostLeaseRows += requested - deleted
            logger.warning("lease lost: acknowledged rows were left for the shard's new owner (they may be sent again)", metadata: [
                "outbox.rows": .stringConvertible(requested - deleted),
            ])
        }
        let drainingBefore = leases.drainingShards
        for s in seqs { window.settle(s) }
        metricsBatch.inFlight = (window.rows, window.bytes)
        // A DELETE that no claim or report follows (the claim loop paused, the last rows of a
        // burst) must not leave its samples for the next heartbeat.
        metricsBatch.flushIfDue(now: now, into: metrics)
        if drainingBefore.contains(where: { window.inFlight(shard: $0) == 0 }) { leaseWake.signal() }
        // Wake the claim loop only when it waits for what this DELETE changed: room in
        // the window, a probe waiting for quiet, a retry hold waiting for its key's
        // reports. Waking it after every DELETE cost a claim that read nothing per row
        // of a trickle (2 claims per row at 100 rows/s).
        if claimWaitsForRoom || !suspects.isEmpty || !retries.isEmpty { claimWake.signal() }
        windowWake.signal()
    }

    /// A DELETE of `seqs` failed (standalone or carried by a claim): they are deleted again.
    func returnPendingDeletes(_ seqs: [UInt64]) {
        pendingDeletes.insert(contentsOf: seqs, at: 0)
        if pendingDeletesSince == nil { pendingDeletesSince = monotonicSeconds() }
        deleteWake.signal()
    }

    /// Whether acknowledged rows must be deleted by the delete loop now rather than carried by
    /// the claim loop's next claim: a backlog is being read (its deletes are batched apart from
    /// its claims, which they would slow), the window waits for room, a lease hands over, a
    /// probe waits, the relay stops, or the claim loop is not claiming.
    var deleteNeededNow: Bool {
        terminated || hasStale(pendingDeletes) || !claimCaughtUp || claimWaitsForRoom || recreating || !suspects.isEmpty
            || pendingDeletes.count >= max(1, configuration.batchSize / 2)
            || monotonicSeconds() < pausedUntil
            || !leases.drainingShards.isEmpty
    }

    /// Acknowledged rows for the claim about to run to delete in the same statement (one round
    /// trip and one transaction instead of two), when the claim loop is caught up — a trickle.
    /// At most `FusedDelete.maxIds` (the oldest); the rest wait for the next claim, or for the
    /// delete loop when their moment is up.
    func takeFusableDeletes() -> FusableDeletes? {
        guard !pendingDeletes.isEmpty, !deleteNeededNow else { return nil }
        let seqs = Array(pendingDeletes.prefix(OutboxQueries.FusedDelete.maxIds))
        var ids: [Int64] = [], shards: [Int32] = [], epochs: [Int64] = []
        ids.reserveCapacity(seqs.count)
        shards.reserveCapacity(seqs.count)
        epochs.reserveCapacity(seqs.count)
        for seq in seqs {
            guard let entry = window.entry(seq) else { return nil }
            ids.append(entry.rowId)
            shards.append(entry.shard)
            epochs.append(leases.heldEpoch(entry.shard))
        }
        if seqs.count == pendingDeletes.count {
            pendingDeletes.removeAll(keepingCapacity: true)
            pendingDeletesSince = nil
            cancelFusedDeleteTimer()
        } else {
            pendingDeletes.removeFirst(seqs.count)  // still pending since then; the timer stays armed
        }
        return (seqs, OutboxQueries.FusedDelete(ids: ids, owner: replicaId, shards: shards, epochs: epochs))
    }

    /// Wakes the delete loop `fusedDeleteWaitSeconds` from now unless a claim carries the pending
    /// deletes first (``takeFusableDeletes`` cancels it). A trickle's rows are thus deleted
    /// without the delete loop waking at all: it used to be woken twice per row — to start that
    /// wait and to end it — each a pool thread woken (most of the relay's CPU per row here was
    /// thread wake-ups, docs/BENCHMARKS.md).
    func armFusedDeleteTimer() {
        cancelFusedDeleteTimer()
        let wake = deleteWake
        fusedDeleteTimer = WakeTimer.shared.schedule(after: Self.fusedDeleteWaitSeconds) { wake.signal() }
    }

    /// After a claim that followed `takeDeferredEvents`: what it did not carry waits for the
    /// next claim no longer than `fusedDeleteWaitSeconds` either (or goes now, if needed now).
    func armFusedDeleteTimerIfPending() {
        guard !pendingDeletes.isEmpty, fusedDeleteTimer == nil else { return }
        if deleteNeededNow { deleteWake.signal() } else { armFusedDeleteTimer() }
    }

    func cancelFusedDeleteTimer() {
        if let t = fusedDeleteTimer { WakeTimer.shared.cancel(t) }
        fusedDeleteTimer = nil
    }

    func runDeadLettersAndAttempts() async {
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
            let epoch = leases.heldEpoch(entry.shard)
            let owner = replicaId
            // Read before a lost connection: its id may name a newer row now (as for the DELETE).
            let checked = isStale(seq)
            let created = checked ? entry.createdAtMicros : nil
            do {
                let moved = try await session.withConnection { conn throws(PGError) in
                    try queries.deadLetter(conn, rowId: entry.rowId, owner: owner, epoch: epoch, reason: info.reason,
                                           errorCode: info.code, createdAtMicros: created)
                }
                deleteFailures.succeeded()
                pendingDeadLetters[seq] = nil
                window.settle(seq)
                retries.forget(rowId: entry.rowId)
                if moved {
                    stats.deadLettered += 1
                    metrics.deadLettered(topic: entry.row?.message.topic ?? "")
                    logger.error("row dead-lettered", metadata: [
                        LogKey.rowId: .stringConvertible(entry.rowId), LogKey.topic: "\(entry.row?.message.topic ?? "")",
                        "outbox.reason": "\(info.reason)",
                    ])
                    if let topic = configuration.deadLetterTopic, let row = entry.row { produceDeadLetterCopy(row, topic: topic, reason: info.reason) }
                } else if checked {
                    // Gone with the lost timeline, its lease lost, or its id names a newer row,
                    // which reads exclude while this row is in flight: read again.
                    stats.lostLeaseRows += 1
                    cursor.rewind()
                    logger.warning("row not dead-lettered: after a lost connection its id no longer names the row read, or its lease was lost; read again",
                                   metadata: [LogKey.rowId: .stringConvertible(entry.rowId)])
                } else {
                    stats.lostLeaseRows += 1
                    logger.warning("lease lost before the row could be dead-lettered; its new owner decides", metadata: [LogKey.rowId: .stringConvertible(entry.rowId)])
                }
                windowWake.signal()
                claimWake.signal()
            } catch {
                logger.warning("cannot dead-letter row yet; retrying", metadata: [LogKey.rowId: .stringConvertible(entry.rowId), LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: 200_000_000)
                if terminated && deleteAttemptsExhausted() { return }
            }
        }
    }

    /// Best effort: the dead-letter table is the record; the topic is a copy for consumers.
    func produceDeadLetterCopy(_ row: ClaimedRow, topic: String, reason: String) {
        var message = KafkaMessage(topic: topic, key: row.message.keyBytes, value: row.message.valueBytes,
                                   headers: row.message.headerList)
        message.addHeader(name: "outbox-dead-letter-reason", value: String(reason.prefix(500)))
        message.addHeader(name: "outbox-original-topic", value: row.message.topic)
        deadLetterSequence += 1
        do { try producer?.produce(message, opaque: deadLetterSequence) } catch {
            logger.warning("cannot produce to the dead-letter topic", metadata: [LogKey.rowId: .stringConvertible(row.id), LogKey.error: "\(error)"])
        }
    }

    func deleteAttemptsExhausted() -> Bool { deleteFailures.failed() }
}
