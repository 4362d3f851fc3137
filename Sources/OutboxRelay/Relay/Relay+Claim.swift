import Foundation
import Kafka
import Logging
import PGClient

/// The claim loop: what to read next, reading a backlog a page ahead, claim failures and back-off.
/// (Producing the rows: Relay+Produce; waiting when caught up: Relay+Wait.)
extension Relay {
    // MARK: Claim

    func claimLoop() async {
        let poll = Double(configuration.pollIntervalMillis) / 1000
        while !stopFlag.isSet {
            if claimCaughtUp, let executor = claimSession?.taskExecutor {
                // Caught up (a trickle, or busy polls): while it stays so, this task prefers the
                // claim session's thread, and the actor's part of a claim (producing its rows,
                // preparing the next wait) runs there too, instead of each claim handing its
                // rows to a pool thread and that thread handing the next wait back: two thread
                // wake-ups fewer per claim. Not while reading a backlog: its next page is then
                // read on that thread while this one's rows are produced (prefetchClaim); a claim
                // that starts such a read leaves claimCaughtUp false, which ends the preference.
                await withTaskExecutorPreference(executor) {
                    repeat {
                        await claimStep(poll: poll)
                    } while !stopFlag.isSet && claimCaughtUp
                }
            } else {
                await claimStep(poll: poll)
            }
        }
        reportDeferral.resume()
        await settlePrefetchedClaim()
    }

    /// One turn of the claim loop: a claim (or a wait), its rows handed to the producer.
    func claimStep(poll: Double) async {
        // A busy poll's pause (see waitWhenCaughtUp), spent on the claim session's thread. The
        // delivery reports that come meanwhile wake nobody (ReportDeferral): at the pause's end
        // the claim loop takes them on that same thread, and the deletes they allow ride the
        // claim that follows. Every other wait has the report loop woken as reports come.
        let pause = pollPause
        pollPause = 0
        var deferring = false
        if pause > 0, let session = claimSession {
            deferring = true
            reportDeferral.deferWakes()
            busyMeter.beginIdle(monotonicSeconds())
            await session.pause(seconds: pause)
            busyMeter.endIdle(monotonicSeconds())
            takeDeferredEvents()
        } else if notifiedWait > 0, prefetchedClaim == nil {
            deferring = true  // the notified wait below defers them too
        } else {
            reportDeferral.resume()
        }
        // Whichever way this turn ends, deletes the claim did not carry get their timer.
        defer { if deferring { armFusedDeleteTimerIfPending() } }
        let now = monotonicSeconds()
        claimLoopBeat = now
        if now < pausedUntil {
            reportDeferral.resume()
            busyMeter.beginIdle(now)
            await claimWake.wait(timeout: pausedUntil - now)
            busyMeter.endIdle(monotonicSeconds())
            return
        }
        if !suspects.isEmpty {
            // Probe phase: one suspect at a time, alone in the producer. (Idle for the busy
            // share: more replicas would not help a broker that fails rows.)
            reportDeferral.resume()
            if probeSeq == nil, window.awaitingReport == 0, !recreating, let producer { probeNext(producer, now: now) }
            busyMeter.beginIdle(now)
            await claimWake.wait(timeout: poll)
            busyMeter.endIdle(monotonicSeconds())
            return
        }
        if !retries.isEmpty, retries.anyDue(now: now) {
            // Keys with rows still awaiting their report stay held (see releaseDue).
            let busy = Set(window.unreported.compactMap { $0.row?.holdKey })
            if retries.releaseDue(now: now, busy: { busy.contains($0) }) != nil { cursor.rewind() }
        }
        if let session = claimSession, !recreating, claimSessionFresh.isSet || leases.heldShards.isEmpty == listeningForRows {
            await followRowsChannel(session: session)
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
        // The wait for a notification, spent on the claim session's thread just before the
        // claim (see waitWhenCaughtUp).
        let notified = notifiedWait
        notifiedWait = 0
        let batch: ClaimBatch
        let request: ClaimCursor.Request
        let fused: FusableDeletes?
        let began: Double
        // How long the claim waited for company before it ran (ClaimPacer): a busy poll's pause,
        // or the linger after a notification.
        var waited = 0.0
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
                return
            }
        } else {
            guard !shards.isEmpty, room >= minimumRoom, !recreating, let session = claimSession else {
                reportDeferral.resume()
                let wait = waitUntilRetry(poll, now: now)
                // Waiting for room (the broker's acknowledgements) is busy; holding nothing to
                // claim, or a producer being re-created, is not.
                if shards.isEmpty || recreating { busyMeter.beginIdle(now) }
                if shards.isEmpty, !recreating, let session = claimSession {
                    // Holding nothing: no claim reads the session's notifications, and a
                    // rebalance among them is what this replica waits for.
                    await waitOnClaimSession(session, timeout: wait)
                } else {
                    await claimWake.wait(timeout: wait)
                }
                busyMeter.endIdle(monotonicSeconds())
                return
            }
            if notified > 0 {
                // Sleep until notified on the claim session's own thread, which then claims at
                // once: no listener thread and no pool thread woken between the NOTIFY and the
                // claim. A wake-up for another reason (room, a lease, a retry, shutdown)
                // interrupts the wait; the loop then starts over. Once notified, it lingers for
                // the rows that commit next (ClaimPacer).
                // Delivery reports that come meanwhile wake nobody either (ReportDeferral): the
                // claim loop takes them when the wait ends, and the claim carries their deletes.
                // With reports outstanding or deletes pending, the wait is no longer than the
                // delete loop would give a claim to carry them: at a slow trickle it ends then,
                // and the claim that follows deletes them.
                reportDeferral.deferWakes()
                if !claimWake.armInterrupt() {
                    let outstanding = !pendingDeletes.isEmpty || window.awaitingReport > 0
                    let wait = outstanding ? min(notified, Self.fusedDeleteWaitSeconds) : notified
                    let linger = pacer.notifiedLinger
                    let router = notificationRouter
                    let outcome: PGSession.WaitOutcome
                    busyMeter.beginIdle(now)
                    defer { busyMeter.endIdle(monotonicSeconds()) }
                    do {
                        // The wait is a hop onto the session, never a call made inline on its
                        // thread: this actor must stay free while the thread sleeps, because the
                        // work that interrupts the wait (room, leases, retries, shutdown) runs on
                        // it. (A build that waited inline held rows for up to 5 s: BENCHMARKS.md,
                        // "Where the relay's CPU goes".)
                        outcome = try await session.wait(timeout: wait, linger: linger, interrupt: claimWake.interrupt!,
                                                         accept: { router.accept($0) })
                    } catch {
                        claimFailed(error, fused: nil)
                        return
                    }
                    if outcome == .interrupted {
                        reportDeferral.resume()
                        return
                    }
                    if outcome == .notified { waited = linger }
                }
                takeDeferredEvents()
            } else {
                // Reports that come during a busy poll's claim still wake nobody: they are taken
                // at the next pause's end, or woken for before any other wait.
                waited = pause
            }
            let limit = window.claimLimit(batchSize: configuration.batchSize, averageRowBytes: averageRowBytes)
            request = cursor.nextRequest(limit: limit, inFlight: window.rowIds, inFlightAtMost: window.highestRowId)
            fused = takeFusableDeletes()
            let claim = claimStatement(shards: shards, request: request, deleting: fused?.delete)
            began = monotonicSeconds()
            do {
                batch = try await session.withConnection(claim)
            } catch {
                claimFailed(error, fused: fused?.seqs)
                return
            }
        }
        stats.claims += 1
        if notificationGate { wakeMode.observe(snapshot: batch.snapshot) }
        if let fused, let deleted = batch.deleted {
            stats.fusedDeletes += 1
            settleDeleted(fused.seqs, requested: fused.delete.ids.count, deleted: deleted, seconds: monotonicSeconds() - began)
        }
        // Where the window's rows' latencies start at the latest, for the pacer (see pathStart).
        var committedAfter: Int64?
        if let dbNow = batch.databaseNowMicros {
            // Database clock − this host's clock, for latencies measured from created_at (a
            // database timestamp): a relay host whose clock is off must not report the offset.
            // Read against when the statement was sent, which the database's clock_timestamp()
            // followed: a latency dated by it errs long by at most the statement's round trip,
            // never short. (Against when the reply was handled it erred short by that and by any
            // wait for this actor: 0.25 ms at the median, 1–1.5 ms in one claim in a hundred on
            // a busy machine.)
            databaseClockOffsetMicros = dbNow - (batch.sentAtWallMicros > 0 ? batch.sentAtWallMicros : wallClockMicros())
            // The path's delay, for how long the next claims wait for company: the oldest row's
            // age when the claim ran (of those that did not commit late), plus the whole
            // statement's time (its reply and decoding are before the produce, and a busy machine
            // lengthens them). Only the read window's first page: rows re-read by a sweep are as
            // old as the rewind made them.
            if request.mode == .window, !batch.rows.isEmpty {
                let statement = batch.seconds
                // The window's rows were invisible in `since`: they committed after it was taken.
                committedAfter = lastOwnSnapshot.flatMap { $0.snapshot == request.since ? $0.takenByMicros : nil }
                let committedWithin = committedAfter.map { Double(dbNow - $0) / 1_000_000 + statement }
                // The broker's part of the path: the slowest acknowledgement since the last claim
                // (the previous claims' rows), or the last one known.
                if let recent = ackLatency.takeRecentMax() { lastAcknowledgement = recent }
                pacer.observe(ages: batch.rows.lazy.map { Double(dbNow - $0.createdAtMicros) / 1_000_000 + statement },
                              waited: waited, committedWithin: committedWithin, acknowledgement: lastAcknowledgement)
                if stats.claims % 32 == 0 { metrics.claimLinger.record(pacer.notifiedLinger) }
            }
            if request.snapshot == nil {
                // This read's own snapshot was taken after the statement reached the server, so
                // after its start on this host: its clock_timestamp() less the whole round trip
                // is no later than that.
                lastOwnSnapshot = (batch.snapshot, dbNow - Int64(batch.seconds * 1_000_000))
            }
        }
        let batchBytes = batch.rows.reduce(0) { $0 + $1.message.byteCount }
        if !batch.rows.isEmpty {
            // Average message size of recent claims (bytes of key, value and headers): what
            // the next claim's row limit is sized by.
            let claimed = Double(batchBytes) / Double(batch.rows.count)
            averageRowBytes = averageRowBytes.map { 0.7 * $0 + 0.3 * claimed } ?? claimed
        }
        failureStreak = 0  // the back-off grows with consecutive failures only
        if request.mode == .sweep { stats.sweeps += 1 }
        let claimed = monotonicSeconds()
        metricsBatch.noteUpdate(now: claimed)
        metricsBatch.claimSeconds.append(claimed - began)
        metricsBatch.batchRows.append(batch.rows.count)
        metricsBatch.flushIfDue(now: claimed, into: metrics)
        cursor.observe(request, snapshot: batch.snapshot, lastRowId: batch.rows.last?.id, rowCount: batch.rows.count)
        if request.generation != cursor.generation {
            // Rewound while this read was in flight (a producer re-created, a connection lost,
            // a probe settled): rows not in flight are to be read again, in order, by the new
            // generation's sweep — these too.
            stats.staleClaims += 1
            return
        }
        if cursor.hasMore { prefetchClaim(afterRows: batch.rows.count, bytes: batchBytes, shards: shards) }
        produce(batch.rows, committedAfter: committedAfter)
        if alreadyDelivered != nil, case .window = cursor.phase { endRedeliveryCheck() }
        claimCaughtUp = !cursor.hasMore
        if !cursor.hasMore, let session = claimSession {
            await waitWhenCaughtUp(rows: batch.rows.count, poll: poll, session: session)
        }
    }

    /// At the end of the claim loop's own wait (a busy poll's pause, a notified wait): the events
    /// that came during it (and the claim before it), taken on the claim loop's own turn rather
    /// than by a woken report loop. Their rows'
    /// deletes are left for the claim about to run, without the fused-delete timer that would
    /// otherwise be armed and cancelled at once.
    func takeDeferredEvents() {
        guard reportDeferral.takeMark(), let producer else { return }
        stats.deferredReportTakes += 1
        claimTakesDeletes = true
        defer { claimTakesDeletes = false }
        for event in producer.takeEvents() { handleProducerEvent(event) }
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
            let sentAt = wallClockMicros()
            let start = monotonicSeconds()
            var batch = try queries.claim(conn, shards: shards, allShards: allShards, request: request, deleting: deleting)
            batch.seconds = monotonicSeconds() - start
            batch.sentAtWallMicros = sentAt
            if try router.take(conn.receivedNotifications()) { router.claimWake.signal() }
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
    func prefetchClaim(afterRows rows: Int, bytes: Int, shards: [Int32]) {
        guard !shards.isEmpty, !recreating, suspects.isEmpty, !stopFlag.isSet, let session = claimSession else { return }
        let limit = window.claimLimit(batchSize: configuration.batchSize, averageRowBytes: averageRowBytes,
                                      reservingRows: rows, reservingBytes: bytes)
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
    ///
    /// And the connection may come back to a database that forgot DELETEs it had reported
    /// committed (an asynchronous failover, a crash with `synchronous_commit = off`): until the
    /// sweep that follows has read everything, a row read again that this process saw
    /// acknowledged is deleted again rather than sent again (``DeliveredMemory``).
    func resyncAfterConnectionLoss() {
        stats.connectionResyncs += 1
        staleBelowSeq = window.nextSequenceNumber
        cursor.reset()
        if deliveredMemory.count > 0 {
            if alreadyDelivered == nil { redeliveriesAvoidedAtResync = stats.redeliveriesAvoided }
            alreadyDelivered = deliveredMemory.rows()
        }
    }

    /// The first sweep after a lost connection has read everything: rows read from now on are
    /// sent as usual.
    func endRedeliveryCheck() {
        alreadyDelivered = nil
        let avoided = stats.redeliveriesAvoided - redeliveriesAvoidedAtResync
        if avoided > 0 {
            logger.warning("rows read again after a lost connection had been acknowledged by the broker already (the database forgot their DELETE, e.g. an asynchronous failover): deleted again, not sent again", metadata: [
                "outbox.rows": .stringConvertible(avoided),
            ])
        }
    }

    func backOff() {
        failureStreak += 1
        let base = Double(configuration.retryBackoffMillis) / 1000
        let delay = min(Self.maxRetryBackoff, base * pow(2, Double(min(failureStreak - 1, 20))))
        pausedUntil = monotonicSeconds() + delay * Double.random(in: 0.8...1.2)
    }
}
