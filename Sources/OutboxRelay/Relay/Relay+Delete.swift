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
                deleteFailures.succeeded()
                metrics.deleteDuration.recordSeconds(monotonicSeconds() - started)
                metrics.rowsDeleted.increment(by: deleted)
                if deleted < ids.count { metrics.lostLeaseRows.increment(by: ids.count - deleted) }
                stats.deleted += deleted
                if deleted < ids.count {
                    stats.lostLeaseRows += ids.count - deleted
                    logger.warning("lease lost: acknowledged rows were left for the shard's new owner (they may be sent again)", metadata: [
                        "outbox.rows": .stringConvertible(ids.count - deleted),
                    ])
                }
                let drainingBefore = Set(leases.leases.filter { $0.value.phase == .draining }.keys)
                for s in seqs { window.settle(s) }
                metrics.inFlightRows.record(window.rows)
                metrics.inFlightBytes.record(window.bytes)
                if drainingBefore.contains(where: { window.inFlight(shard: $0) == 0 }) { leaseWake.signal() }
                // Wake the claim loop only when it waits for what this DELETE changed: room in
                // the window, a probe waiting for quiet, a retry hold waiting for its key's
                // reports. Waking it after every DELETE cost a claim that read nothing per row
                // of a trickle (2 claims per row at 100 rows/s).
                if claimWaitsForRoom || !suspects.isEmpty || !retries.isEmpty { claimWake.signal() }
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
            let epoch = leases.epochArray()[Int(entry.shard)]
            let owner = replicaId
            do {
                let moved = try await session.withConnection { conn throws(PGError) in
                    try queries.deadLetter(conn, rowId: entry.rowId, owner: owner, epoch: epoch, reason: info.reason, errorCode: info.code)
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
