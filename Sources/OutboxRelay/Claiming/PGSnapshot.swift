/// A PostgreSQL snapshot as `pg_current_snapshot()` prints it: `xmin:xmax:xip1,xip2,…`.
///
/// - `xmin`: every transaction with a lower xid had ended when the snapshot was taken;
/// - `xmax`: `latestCompletedXid + 1` — **not** "the next xid to be assigned". A transaction
///   running with an xid at or above `xmax` is neither in `xip` nor lowers `xmin`; it is simply
///   invisible (procarray.c `GetSnapshotData`);
/// - `xip`: the running top-level transactions with xids in `[xmin, xmax)`.
///
/// ``isVisible(_:)`` is `pg_visible_in_snapshot`: the claim statements use the server's
/// function, the pure tests use this mirror of it.
public struct PGSnapshot: Sendable, Hashable, CustomStringConvertible {
    public let xmin: UInt64
    public let xmax: UInt64
    /// In-progress xids, ascending.
    public let xip: [UInt64]

    public init(xmin: UInt64, xmax: UInt64, xip: [UInt64] = []) {
        self.xmin = xmin
        self.xmax = xmax
        self.xip = xip.sorted()
    }

    /// Parses the text form; nil when it is not one.
    public init?(text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, let xmin = UInt64(parts[0]), let xmax = UInt64(parts[1]), xmin <= xmax else { return nil }
        var xip: [UInt64] = []
        if !parts[2].isEmpty {
            for p in parts[2].split(separator: ",", omittingEmptySubsequences: false) {
                guard let x = UInt64(p) else { return nil }
                xip.append(x)
            }
        }
        self.init(xmin: xmin, xmax: xmax, xip: xip)
    }

    /// Whether a transaction with this xid had committed or aborted when the snapshot was taken
    /// (`pg_visible_in_snapshot`).
    public func isVisible(_ xid: UInt64) -> Bool {
        if xid < xmin { return true }
        if xid >= xmax { return false }
        return !xip.contains(xid)
    }

    /// The text form `pg_snapshot` reads back.
    public var description: String {
        "\(xmin):\(xmax):" + xip.map(String.init).joined(separator: ",")
    }

    /// `xip` as an array literal (`{1,2}`) for an `xid8[]` parameter.
    var xipArrayLiteral: String {
        "{" + xip.map(String.init).joined(separator: ",") + "}"
    }
}
