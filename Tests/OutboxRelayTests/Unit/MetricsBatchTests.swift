@testable import OutboxRelay
import Testing

@Suite struct MetricsBatchTests {
    @Test func dueAfterTheIntervalOrEnoughSamples() {
        var b = MetricsBatch()
        #expect(!b.isDue(now: 100), "nothing gathered")
        b.noteUpdate(now: 10)
        b.claimSeconds.append(0.001)
        b.noteUpdate(now: 10.2)  // a later update keeps the oldest one's time
        #expect(!b.isDue(now: 10 + MetricsBatch.flushInterval - 0.01))
        #expect(b.isDue(now: 10 + MetricsBatch.flushInterval))
        var full = MetricsBatch()
        full.noteUpdate(now: 50)
        full.commitToAckMicros = Array(repeating: 900, count: MetricsBatch.maxSamples)
        #expect(full.isDue(now: 50), "a full batch goes at once")
    }

    @Test func producedRowsAddUpPerTopic() {
        var b = MetricsBatch()
        b.addProduced(topic: "a", count: 3)
        b.addProduced(topic: "b", count: 1)
        b.addProduced(topic: "a", count: 2)
        b.addProduced(topic: "c", count: 0)
        #expect(b.produced.map(\.topic) == ["a", "b"])
        #expect(b.produced.map(\.count) == [5, 1])
    }

    @Test func aFlushEmptiesTheBatch() {
        var b = MetricsBatch()
        b.noteUpdate(now: 1)
        b.commitToAckMicros += [800, 1_200]
        b.claimSeconds.append(0.0003)
        b.deleteSeconds.append(0.0004)
        b.batchRows.append(2)
        b.rowsDeleted = 2
        b.addProduced(topic: "t", count: 2)
        b.inFlight = (2, 512)
        b.flush(into: RelayMetrics(table: "public.metrics_batch_test"))
        #expect(b.isEmpty)
        #expect(!b.isDue(now: 1_000), "nothing left to flush")
    }

    @Test func aFlushHandsOverUpdatesWhoseTimeWasNotNoted() {
        var b = MetricsBatch()
        b.addProduced(topic: "t", count: 3)
        b.rowsDeleted = 3
        #expect(!b.isEmpty && !b.isDue(now: 1_000), "not due without a noted time")
        b.flush(into: RelayMetrics(table: "public.metrics_batch_test"))
        #expect(b.isEmpty, "the heartbeat's flush still takes them")
    }
}
