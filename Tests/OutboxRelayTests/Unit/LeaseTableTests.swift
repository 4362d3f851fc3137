import OutboxRelay
import Testing

@Suite struct LeaseTableTests {
    @Test func assignmentSplitsShardsEvenlyAndCompletely() {
        let replicas = ["c", "a", "b"]
        var covered: [Int32] = []
        var sizes: [Int] = []
        for r in replicas {
            let range = ShardAssignment.shards(for: r, among: replicas, shardCount: 256)
            covered += Array(range)
            sizes.append(range.count)
        }
        #expect(covered.sorted() == Array(0..<256))
        #expect(sizes.max()! - sizes.min()! <= 1)
        // Same answer whatever order the list comes in, and a replica missing from the list counts itself.
        #expect(ShardAssignment.shards(for: "a", among: ["b", "c", "a"], shardCount: 256) == ShardAssignment.shards(for: "a", among: replicas, shardCount: 256))
        #expect(ShardAssignment.shards(for: "z", among: [], shardCount: 8) == 0..<8)
    }

    @Test func planAcquiresWantedShardsAndDrainsOthersBeforeRelease() {
        var t = LeaseTable(shardCount: 4)
        var p = t.plan(desired: 0..<4, inFlightByShard: [:])
        #expect(p.acquire == [0, 1, 2, 3])
        t.acquired(p.acquire.map { ($0, 1) }, sentAt: 0, duration: 10, margin: 1)
        #expect(t.claimable(now: 1) == [0, 1, 2, 3])
        // A second replica joined: keep 0..<2, hand over 2 and 3. Shard 2 has rows in flight.
        p = t.plan(desired: 0..<2, inFlightByShard: [2: 5])
        #expect(p.drain == [2, 3])
        #expect(p.release == [3], "a shard with rows in flight is released only once they settle")
        t.drain(p.drain)
        t.released(p.release)
        #expect(t.claimable(now: 1) == [0, 1], "draining shards are not claimed")
        #expect(t.producibleEpoch(2, now: 1) == nil)
        #expect(t.epochArray() == [1, 1, 1, 0], "a draining shard still deletes under its epoch")
        p = t.plan(desired: 0..<2, inFlightByShard: [:])
        #expect(p.release == [2])
    }

    @Test func aDrainingShardWantedAgainIsReactivated() {
        var t = LeaseTable(shardCount: 2)
        t.acquired([(0, 3), (1, 3)], sentAt: 0, duration: 10, margin: 1)
        t.drain([1])
        let p = t.plan(desired: 0..<2, inFlightByShard: [1: 1])
        #expect(p.reactivate == [1])
        t.reactivate(p.reactivate)
        #expect(t.claimable(now: 1) == [0, 1])
    }

    @Test func renewalDropsLostLeasesAndExtendsTheRest() {
        var t = LeaseTable(shardCount: 3)
        t.acquired([(0, 1), (1, 1), (2, 1)], sentAt: 0, duration: 10, margin: 1)
        // Shard 1 was taken over by another replica (not returned); shard 2 came back with a new epoch.
        let lost = t.renewed([(0, 1), (2, 7)], sentAt: 5, duration: 10, margin: 1)
        #expect(lost == [1, 2])
        #expect(t.heldShards == [0])
        #expect(t.producibleEpoch(0, now: 13.5) == 1)
        #expect(t.producibleEpoch(0, now: 14.5) == nil, "valid until sentAt + duration - margin")
    }

    @Test func aLeaseNotRenewedInTimeStopsProducing() {
        var t = LeaseTable(shardCount: 1)
        t.acquired([(0, 4)], sentAt: 100, duration: 6, margin: 1)
        #expect(t.producibleEpoch(0, now: 104.9) == 4)
        #expect(t.producibleEpoch(0, now: 105.0) == nil)
        #expect(t.claimable(now: 105.0).isEmpty)
        #expect(t.heldShards == [0], "still held for the lease-checked DELETE; the database decides")
    }

    /// The ownership rule: a shard is produced to only while a message produced now gets its
    /// final report (delivery bound) before the local lease view expires.
    @Test func aShardIsProducedToOnlyWhileTheLeaseOutlivesTheDeliveryBound() {
        var t = LeaseTable(shardCount: 2, deliveryBound: 3)
        t.acquired([(0, 7)], sentAt: 100, duration: 10, margin: 1)  // valid until 109
        #expect(t.producibleEpoch(0, now: 105.9) == 7)
        #expect(t.producibleEpoch(0, now: 106) == nil, "a message produced at 106 could land at 109")
        #expect(t.claimable(now: 106).isEmpty, "nothing is claimed that may not be produced")
        let deadlines = t.produceDeadlines()
        #expect(deadlines[0] == 106)
        #expect(deadlines[1] == -.infinity)
        t.drain([0])
        #expect(t.produceDeadlines()[0] == -.infinity, "a draining shard is not produced to")
        #expect(t.epochArray()[0] == 7, "but its acknowledged rows are still deleted under its epoch")
    }

    /// The views kept per change (claimable shards, draining set) follow every change, and a
    /// lease that expires before the others leaves the claimable shards on its own.
    @Test func theDerivedViewsFollowEveryChangeAndEachLeasesOwnExpiry() {
        var t = LeaseTable(shardCount: 4, deliveryBound: 1)
        t.acquired([(0, 1), (1, 1)], sentAt: 0, duration: 10, margin: 0)   // valid until 10
        t.acquired([(2, 5), (3, 5)], sentAt: 4, duration: 10, margin: 0)   // valid until 14
        #expect(t.claimable(now: 8.9) == [0, 1, 2, 3])
        #expect(t.claimable(now: 9) == [2, 3], "0 and 1 expire first")
        #expect(t.claimable(now: 13) == [])
        t.drain([3])
        #expect(t.drainingShards == [3])
        #expect(t.claimable(now: 5) == [0, 1, 2])
        _ = t.renewed([(0, 1), (2, 5), (3, 5)], sentAt: 20, duration: 10, margin: 0)  // 1 lost; valid until 30
        #expect(t.heldShards == [0, 2, 3])
        #expect(t.claimable(now: 21) == [0, 2])
        #expect(t.epochArray() == [1, 0, 5, 5])
        #expect([0, 1, 2, 3].map { t.heldEpoch($0) } == [1, 0, 5, 5], "draining shard 3 still deletes under its epoch")
        t.reactivate([3])
        #expect(t.drainingShards.isEmpty)
        #expect(t.claimable(now: 21) == [0, 2, 3])
        #expect(t.produceDeadlines() == [29, -.infinity, 29, 29])
    }
}

@Suite struct WakeFilterTests {
    @Test func onlyNotificationsNamingAHeldShardWake() {
        let f = WakeFilter(shardCount: 256)
        f.update([3, 64, 200])
        #expect(f.wakes("shards:3"))
        #expect(f.wakes("shards:1,2,200"))
        #expect(!f.wakes("shards:1,2,65"))
        #expect(!f.wakes("shards:4"))
        #expect(f.wakes("*"), "a statement with many shards wakes everyone")
        #expect(f.wakes(""), "an older trigger's empty payload wakes everyone")
        #expect(f.wakes("shards:"), "unreadable: wake")
        #expect(f.wakes("shards:1,,2"), "unreadable: wake")
        #expect(f.wakes("shards:99999"), "out of range: wake")
        f.update([])
        #expect(!f.wakes("shards:3"))
    }
}
