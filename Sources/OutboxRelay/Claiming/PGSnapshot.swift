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
        // PostgreSQL prints them ascending already: sort only when they are not.
        self.xip = zip(xip, xip.dropFirst()).allSatisfy({ $0 <= $1 }) ? xip : xip.sorted()
    }

    /// Parses the text form; nil when it is not one.
    public init?(text: String) {
        var text = text
        guard let parsed = text.withUTF8({ Self(utf8: UnsafeRawBufferPointer($0)) }) else { return nil }
        self = parsed
    }

    /// Parses the text form from its UTF-8 bytes (a claim's result column, read in place: the
    /// claim parses one per statement, and splitting a String was about 4 % of the claim
    /// thread's CPU at 500 rows/s). Strict: `xmin:xmax:xip,…` in decimal, `xmin <= xmax`.
    public init?(utf8 bytes: UnsafeRawBufferPointer) {
        var i = 0
        /// The decimal digits from `i` up to the next byte that is not one; nil if none, or
        /// if they overflow.
        func number() -> UInt64? {
            var value: UInt64 = 0
            let start = i
            while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(UInt64(bytes[i] - UInt8(ascii: "0")))
                guard !o1, !o2 else { return nil }
                value = sum
                i += 1
            }
            return i > start ? value : nil
        }
        /// Consumes `separator` if it is next.
        func skip(_ separator: UInt8) -> Bool {
            guard i < bytes.count, bytes[i] == separator else { return false }
            i += 1
            return true
        }
        guard let xmin = number(), skip(UInt8(ascii: ":")), let xmax = number(), skip(UInt8(ascii: ":")), xmin <= xmax else {
            return nil
        }
        var xip: [UInt64] = []
        while i < bytes.count {
            if !xip.isEmpty, !skip(UInt8(ascii: ",")) { return nil }
            guard let x = number() else { return nil }
            xip.append(x)
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
        var text = "\(xmin):\(xmax):"
        Self.append(xip, to: &text)
        return text
    }

    /// `xip` as an array literal (`{1,2}`) for an `xid8[]` parameter.
    var xipArrayLiteral: String {
        if xip.isEmpty { return "{}" }
        var text = "{"
        Self.append(xip, to: &text)
        text += "}"
        return text
    }

    /// `xip` comma-separated, without an array of Strings to join (a claim sends one or two of
    /// these per statement).
    private static func append(_ xip: [UInt64], to text: inout String) {
        for (n, x) in xip.enumerated() {
            if n > 0 { text += "," }
            text += String(x)
        }
    }
}
