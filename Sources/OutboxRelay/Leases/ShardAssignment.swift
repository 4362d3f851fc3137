/// Which shards a replica should hold: the live replicas, sorted by id, split the shards into
/// contiguous, even ranges (sizes differ by at most one). Every replica computes the same answer
/// from the same replica list, so there is no coordinator.
public enum ShardAssignment {
    public static func shards(for replica: String, among live: [String], shardCount: Int) -> Range<Int32> {
        let sorted = Array(Set(live + [replica])).sorted()
        let n = sorted.count
        let index = sorted.firstIndex(of: replica)!
        let base = shardCount / n
        let extra = shardCount % n
        let start = index * base + min(index, extra)
        let size = base + (index < extra ? 1 : 0)
        return Int32(start)..<Int32(start + size)
    }
}
