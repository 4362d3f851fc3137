import Foundation
import Kafka
import Logging
import PGClient

/// Delivery reports, the failure policy carried out, and producer re-creation.
extension Relay {
    // MARK: Delivery reports

    /// Takes the producer's events when librdkafka says they wait (``KafkaProducer`` calls
    /// `reportWake` from a broker thread): the report is handled on this actor with no thread of
    /// ours in between. Events of a replaced producer are not taken: its rows were taken back
    /// (see `recreateProducer`).
    func reportLoop() async {
        while reportsOpen {
            // The timeout only bounds a wake-up that never came; librdkafka announces every
            // empty → non-empty change of its queue.
            await reportWake.wait(timeout: 1)
            guard reportsOpen, let producer else { continue }
            _ = reportDeferral.takeMark()
            for event in producer.takeEvents() { handleProducerEvent(event) }
        }
    }

    func handleProducerEvent(_ event: KafkaProducer.Event) {
        switch event {
        case .deliveryReports(let reports):
            handle(reports)
        case .log(let level, let facility, let message):
            // librdkafka's own lines, with its syslog level, through the relay's logger.
            let mapped: Logger.Level = level <= 2 ? .error : level <= 4 ? .warning
                : level == 5 ? .notice : level == 6 ? .info : .debug
            logger.log(level: mapped, "librdkafka: \(message)", metadata: ["kafka.facility": "\(facility)"])
        case .error(let error):
            if error.isFatal {
                logger.error("fatal Kafka producer error", metadata: [LogKey.error: "\(error)"])
                scheduleRecreation(reason: "fatal error: \(error)")
            } else {
                logger.warning("Kafka client error", metadata: [LogKey.error: "\(error)"])
            }
        }
    }

    func handle(_ reports: [DeliveryReport]) {
        let now = monotonicSeconds()
        // For commit → ack, each row is dated by when the broker's acknowledgement came (kept by
        // ackLatency on librdkafka's broker thread; a report is taken up to a claim cycle later),
        // on the database's clock. A row whose time was not kept is dated now.
        let nowMicros = wallClockMicros()
        // Rows produced per topic, for the metric: a batch of reports nearly always names one
        // topic, so rows are counted per run of one topic rather than hashed per report (perf: a
        // dictionary was a fifth of this function's time at 500 rows/s).
        var lastTopic: String?
        var lastTopicRows = 0
        metricsBatch.noteUpdate(now: now)
        var anyFailure = false
        let hadPendingDeletes = !pendingDeletes.isEmpty
        let tracking = !retries.history.isEmpty
        for report in reports {
            if let seq = probeSeq, report.opaque == seq {
                probeSeq = nil
                if let row = window.entry(seq)?.row { settleProbe(row) }
            }
            if let error = report.error {
                endSpan(report.opaque, partition: report.partition, error: error)
                guard let entry = window.fail(report.opaque) else { continue }
                stats.failed += 1
                anyFailure = true
                let fencing = [KafkaErrorCode.producerFenced, KafkaErrorCode.invalidProducerEpoch,
                               KafkaErrorCode.unknownProducerId, KafkaErrorCode.outOfOrderSequence].contains(error.errorCode)
                consecutiveFencing = fencing ? consecutiveFencing + 1 : 0
                failed(entry, error: error, persistence: report.persistence, now: now)
            } else if let entry = window.acknowledge(report.opaque) {
                endSpan(report.opaque, partition: report.partition, offset: report.offset)
                stats.delivered += 1
                consecutiveFencing = 0
                watchdog.restart(now: now)
                pendingDeletes.append(report.opaque)
                deliveredMemory.record(id: entry.rowId, createdAtMicros: entry.createdAtMicros)
                if let row = entry.row {
                    if row.message.topic == lastTopic {
                        lastTopicRows += 1
                    } else {
                        if let lastTopic { metricsBatch.addProduced(topic: lastTopic, count: lastTopicRows) }
                        lastTopic = row.message.topic
                        lastTopicRows = 1
                    }
                    if configuration.recordsDeliveries {
                        ledger[row.id] = DeliveryPlace(topic: row.message.topic, partition: report.partition, offset: report.offset)
                    }
                    // On the database's clock, as created_at and the row's path start are.
                    let acknowledgedAt = (ackLatency.acknowledgedAtMicros(opaque: report.opaque) ?? nowMicros) + databaseClockOffsetMicros
                    metricsBatch.commitToAckMicros.append(max(0, acknowledgedAt - row.createdAtMicros))
                    if entry.pathStartMicros != .min {
                        pacer.observeRow(latency: Double(acknowledgedAt - entry.pathStartMicros) / 1_000_000,
                                         polling: entry.claimedPolling, rowRate: wakeMode.rate)
                    }
                }
                if tracking, let row = entry.row {
                    topicLastSuccess[row.message.topic] = now
                    retries.forget(rowId: row.id)
                }
            }
        }
        if !pendingDeletes.isEmpty {
            if !hadPendingDeletes { pendingDeletesSince = now }
            // Needed now: wake the delete loop. Otherwise the next claim may carry them: the
            // delete loop is woken only if none has within fusedDeleteWaitSeconds.
            if deleteNeededNow {
                deleteWake.signal()
            } else if !hadPendingDeletes && !claimTakesDeletes {
                armFusedDeleteTimer()
            }
        }
        if let lastTopic { metricsBatch.addProduced(topic: lastTopic, count: lastTopicRows) }
        // A drain's reports come faster than its claims when the window waits for room (those
        // turns of the claim loop end before its own check): bounded here too.
        metricsBatch.flushIfDue(now: now, into: metrics)
        if anyFailure {
            claimWake.signal()
            windowWake.signal()
        }
        if consecutiveFencing >= Self.fencingStormThreshold, !lifecycle.recreationScheduled {
            consecutiveFencing = 0
            scheduleRecreation(reason: "producer fenced repeatedly")
        }
    }


    /// Replaces the producer: after a fatal error, a fencing storm, or when the watchdog sees
    /// outstanding messages without any report. The old instance's outstanding messages are
    /// purged and their reports taken for a moment — a refused batch's own report names the
    /// rows to probe alone — and whatever is still unreported is then written off; every such
    /// row is read again and re-sent in id order by the new instance.
    func scheduleRecreation(reason: String) {
        guard lifecycle.requestRecreation() else { return }
        Task { await self.recreateProducer(reason: reason) }
    }

    func recreateProducer(reason: String) async {
        guard producer != nil, lifecycle.recreationStarts(), let old = producer else { return }
        logger.error("re-creating the Kafka producer", metadata: ["outbox.reason": "\(reason)"])
        // The old instance must not send anything more (a zombie within the process): purge
        // what it holds and take the reports that brings, for a bounded moment.
        await purgeAndTakeReports(old)
        // Requests it already wrote may still sit in the kernel (unsent, or sent and not yet
        // acknowledged across a partition): reset its connections so none of them reaches the
        // broker after the new instance re-sends those rows and later rows of their keys.
        let reset = old.abortConnections()
        logger.info("reset the replaced producer's broker connections", metadata: ["outbox.connections": .stringConvertible(reset)])
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
        endOrphanSpans(outcome: "withdrawn: producer re-created")
        if !lost.isEmpty { cursor.rewind() }
        stats.producerRecreations += 1
        metrics.producerRecreations.increment()
        while true {
            do {
                producer = try makeProducer()
                break
            } catch {
                logger.error("cannot create the Kafka producer; retrying", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(nanoseconds: 1_000_000_000)
            }
        }
        watchdog.restart(now: monotonicSeconds())
        lifecycle.recreationEnded()
        claimWake.signal()
        windowWake.signal()
    }

    /// Purges everything `producer` still holds (it sends none of it any more) and waits, for a
    /// bounded moment, for the reports that brings — a refused batch's own reports name the rows
    /// to probe, and the rest are taken back.
    func purgeAndTakeReports(_ producer: KafkaProducer) async {
        producer.purgeAll()
        let deadline = monotonicSeconds() + Self.recreationReportWait
        while window.awaitingReport > 0 {
            let left = deadline - monotonicSeconds()
            if left <= 0 { break }
            await windowWake.wait(timeout: left)
        }
    }
}
