/// Rows this process lately saw acknowledged by the broker, by id and `created_at`: a ring of the
/// last `capacity` acknowledgements, no I/O.
///
/// A lost connection can come back to a database that forgot DELETEs it had reported committed:
/// an asynchronous standby promoted, or a crash with `synchronous_commit = off`. Those rows are
/// in the outbox again, and the relay's sweep after the lost connection reads them. Sending them
/// again would be a duplicate, and a stale one: later rows of their keys went out meanwhile, so
/// a consumer keeping the latest value per key would end at the old row's. A row read again whose
/// id *and* `created_at` match an acknowledgement here is in Kafka already: it is deleted (lease
/// checked) without being produced. A new row that reuses the id after a failover has another
/// `created_at` and is sent as usual.
public struct DeliveredMemory: Sendable {
    public struct Row: Hashable, Sendable {
        public let id: Int64
        public let createdAtMicros: Int64
        public init(id: Int64, createdAtMicros: Int64) {
            self.id = id
            self.createdAtMicros = createdAtMicros
        }
    }

    public let capacity: Int
    private var ids: [Int64] = []
    private var created: [Int64] = []
    private var next = 0

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Remembers an acknowledged row (forgetting the oldest once full).
    @inline(__always)
    public mutating func record(id: Int64, createdAtMicros: Int64) {
        if ids.count < capacity {
            ids.append(id)
            created.append(createdAtMicros)
        } else {
            ids[next] = id
            created[next] = createdAtMicros
            next = next + 1 == capacity ? 0 : next + 1
        }
    }

    public var count: Int { ids.count }

    /// The remembered rows as a set, for the lookups of one sweep.
    public func rows() -> Set<Row> {
        var set = Set<Row>(minimumCapacity: ids.count)
        for i in ids.indices { set.insert(Row(id: ids[i], createdAtMicros: created[i])) }
        return set
    }
}
