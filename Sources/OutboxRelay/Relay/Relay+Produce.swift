import Foundation
import Kafka
import Logging
import PGClient

/// Producing claimed rows (the ownership rule per row) and what a failed delivery does: retry,
/// rewind, probe a suspect alone, or dead-letter.
extension Relay {
    /// `committedAfter`: the read window's rows committed after this time (database clock, µs),
    /// for the pacer (see pathStart); nil: not samples.
    func produce(_ rows: [ClaimedRow], committedAfter: Int64? = nil) {
        guard let producer, !recreating else {
            // Not produced now: read again once a producer is ready.
            if !rows.isEmpty { cursor.rewind() }
            return
        }
        let deadlines = leases.produceDeadlines()
        let hook = configuration.beforeProduce
        // The wait these rows' latencies steer: the one this claim followed. (The mode changes
        // after the produce, in waitWhenCaughtUp, and the acknowledgements come later still.)
        let claimedPolling = wakeMode.mode == .polling
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
            if let delivered = alreadyDelivered,
               delivered.contains(DeliveredMemory.Row(id: row.id, createdAtMicros: row.createdAtMicros)) {
                // Acknowledged before a lost connection, and back: the database forgot its DELETE.
                deleteWithoutSending(row)
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
                                   createdAtMicros: row.createdAtMicros,
                                   pathStartMicros: committedAfter.map { Self.pathStart(row, committedAfter: $0) } ?? .min,
                                   claimedPolling: claimedPolling, row: row)
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

    /// Where a row's COMMIT → acknowledgement latency starts at the latest, database clock: its
    /// INSERT, or when the snapshot its transaction was invisible in was taken, if later (it
    /// committed after that). With the acknowledgement dated on the database's clock by an offset
    /// that errs long (see claimStep), the latency so measured is never short. Only rows of a
    /// window's first page with that snapshot known are samples: a sweep's rows are as old as the
    /// rewind made them, and without the snapshot a row of a transaction that stayed open would
    /// count the application's time as the path's.
    static func pathStart(_ row: ClaimedRow, committedAfter: Int64) -> Int64 {
        max(row.createdAtMicros, committedAfter)
    }

    /// A row the broker acknowledged before (see DeliveredMemory): into the window as acknowledged,
    /// so the lease-checked DELETE takes it like any other.
    func deleteWithoutSending(_ row: ClaimedRow) {
        let seq = window.admit(rowId: row.id, shard: row.shard, bytes: row.message.byteCount,
                               createdAtMicros: row.createdAtMicros, row: row)
        _ = window.acknowledge(seq)
        stats.redeliveriesAvoided += 1
        if pendingDeletes.isEmpty { pendingDeletesSince = monotonicSeconds() }
        pendingDeletes.append(seq)
        deleteWake.signal()
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
}
