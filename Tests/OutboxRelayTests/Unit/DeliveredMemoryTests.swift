import OutboxRelay
import Testing

@Suite struct DeliveredMemoryTests {
    typealias Row = DeliveredMemory.Row

    @Test func aRowIsKnownByItsIdAndCreatedAtTogether() {
        var m = DeliveredMemory(capacity: 8)
        m.record(id: 5, createdAtMicros: 1_000)
        let rows = m.rows()
        #expect(rows.contains(Row(id: 5, createdAtMicros: 1_000)))
        // A failover can hand the id out again, to a new row: another created_at, not delivered.
        #expect(!rows.contains(Row(id: 5, createdAtMicros: 2_000)))
        #expect(!rows.contains(Row(id: 6, createdAtMicros: 1_000)))
    }

    @Test func theOldestAreForgottenOnceFull() {
        var m = DeliveredMemory(capacity: 4)
        for i in 1...10 { m.record(id: Int64(i), createdAtMicros: Int64(i) * 10) }
        #expect(m.count == 4)
        #expect(m.rows() == Set((7...10).map { Row(id: Int64($0), createdAtMicros: Int64($0) * 10) }))
    }
}
