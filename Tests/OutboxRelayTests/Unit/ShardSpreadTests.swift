import OutboxRelay
import Testing

@Suite struct ShardSpreadTests {
    func r(_ id: String, _ busy: Double?, holds: Bool) -> ReplicaLoad { ReplicaLoad(id: id, busy: busy, holdsShards: holds) }

    @Test func evenSpreadHasEveryReplicaClaim() {
        let live = [r("b", 0, holds: false), r("a", 0.9, holds: true), r("c", 0, holds: false)]
        #expect(ShardAssignment.active(live, spread: .even) == ["b", "a", "c"])
        #expect(ShardAssignment.shards(for: "c", among: live, spread: .even, shardCount: 256).count == 85)
    }

    @Test func aQuietGroupHasOneClaimerTheCurrentHolderFirstThenTheOldest() {
        // Nobody holds yet (a group starting): the oldest claims alone.
        let starting = [r("old", 0, holds: false), r("mid", 0, holds: false), r("new", 0, holds: false)]
        #expect(ShardAssignment.active(starting, spread: .load) == ["old"])
        #expect(ShardAssignment.shards(for: "old", among: starting, spread: .load, shardCount: 256) == 0..<256)
        #expect(ShardAssignment.shards(for: "new", among: starting, spread: .load, shardCount: 256).isEmpty)
        // A younger replica holds the shards (the oldest joined later, or came back): it keeps them.
        let held = [r("old", 0, holds: false), r("mid", 0.2, holds: true), r("new", 0, holds: false)]
        #expect(ShardAssignment.active(held, spread: .load) == ["mid"])
        // The holder died: it left the live list; the oldest standby takes over.
        #expect(ShardAssignment.active([r("old", 0, holds: false), r("new", 0, holds: false)], spread: .load) == ["old"])
        // One replica alone claims whatever its load.
        #expect(ShardAssignment.active([r("x", 0, holds: false)], spread: .load) == ["x"])
    }

    @Test func theClaimingSetGrowsWhenBusyAndShrinksWithABandAgainstFlapping() {
        // One holder over 70 % busy: a second one joins it.
        let busy = [r("a", 0.9, holds: true), r("b", 0, holds: false), r("c", 0, holds: false)]
        #expect(ShardAssignment.active(busy, spread: .load) == ["a", "b"])
        // Saturated (a drain): as many as the summed share needs at 70 % each, at least one more.
        let draining = [r("a", 1, holds: true), r("b", 1, holds: true), r("c", 0, holds: false)]
        #expect(ShardAssignment.active(draining, spread: .load) == ["a", "b", "c"])
        // Two holders at 0.45 in all: neither grow (> 1.4) nor shrink (< 0.35).
        let band = [r("a", 0.25, holds: true), r("b", 0.2, holds: true), r("c", 0, holds: false)]
        #expect(ShardAssignment.active(band, spread: .load) == ["a", "b"])
        // Quiet again: back to the fewest that keep each below 70 %.
        let quiet = [r("a", 0.1, holds: true), r("b", 0.1, holds: true), r("c", 0.05, holds: true)]
        #expect(ShardAssignment.active(quiet, spread: .load) == ["a"])
        // Three holders at 1.1 in all: inside the band (grow above 2.1, shrink below 0.7), they stay.
        let half = [r("a", 0.5, holds: true), r("b", 0.4, holds: true), r("c", 0.2, holds: true)]
        #expect(ShardAssignment.active(half, spread: .load) == ["a", "b", "c"])
        // A share out of range (an old or odd row) counts as 0...1.
        #expect(ShardAssignment.active([r("a", 7, holds: true), r("b", -3, holds: false)], spread: .load) == ["a", "b"])
    }

    @Test func oneReplicaThatSpreadsEvenlyMakesAllOfThemDoSo() {
        // `--shard-spread even`, or an older version in a rolling upgrade (it publishes no
        // share): were the others to stand by, its even share would leave shards unheld.
        let mixed = [r("old", nil, holds: true), r("new", 0, holds: false), r("newer", 0, holds: false)]
        #expect(ShardAssignment.active(mixed, spread: .load) == ["old", "new", "newer"])
        var covered: [Int32] = []
        for replica in mixed.map(\.id) { covered += Array(ShardAssignment.shards(for: replica, among: mixed, spread: .load, shardCount: 256)) }
        #expect(covered.sorted() == Array(0..<256))
    }

    @Test func everyReplicaDerivesTheSameSplitOfAllShards() {
        let live = [r("a", 0.9, holds: true), r("b", 0.6, holds: true), r("c", 0, holds: false), r("d", 0, holds: false)]
        let claiming = ShardAssignment.active(live, spread: .load)
        #expect(claiming == ["a", "b", "c"])
        var covered: [Int32] = []
        for replica in live.map(\.id) { covered += Array(ShardAssignment.shards(for: replica, among: live, spread: .load, shardCount: 256)) }
        #expect(covered.sorted() == Array(0..<256))
    }

    @Test func busyMeterIsTheShareOfTimeNotIdleSmoothedOverHeartbeats() {
        var m = BusyMeter()
        m.sample(now: 0)
        #expect(m.share == 0)
        m.beginIdle(0.5)
        m.endIdle(0.75)
        m.sample(now: 1)  // 75 % busy
        #expect(abs(m.share - 0.375) < 1e-9)
        m.sample(now: 2)  // 100 % busy
        #expect(abs(m.share - 0.6875) < 1e-9)
        // A wait that spans heartbeats counts in each interval it covers.
        m.beginIdle(2.5)
        m.sample(now: 3)  // 50 % busy
        #expect(abs(m.share - 0.59375) < 1e-9)
        m.sample(now: 4)  // idle throughout
        #expect(abs(m.share - 0.296875) < 1e-9)
        m.endIdle(4.5)
        m.sample(now: 5)  // 50 % busy
        #expect(abs(m.share - 0.3984375) < 1e-9)
    }
}
