import CLibPQ

/// A query result in binary format. Owns its `PGresult` (cleared exactly once, in `deinit`).
///
/// `PGresult` may cross threads; this type is immutable after creation.
public final class PGResult: @unchecked Sendable {
    private let handle: OpaquePointer
    public let rowCount: Int
    public let columnCount: Int

    init(_ handle: OpaquePointer) {
        self.handle = handle
        rowCount = Int(PQntuples(handle))
        columnCount = Int(PQnfields(handle))
    }

    deinit { PQclear(handle) }

    /// Rows affected by an INSERT/UPDATE/DELETE (`PQcmdTuples`), 0 when not applicable.
    public var affectedRows: Int {
        guard let s = PQcmdTuples(handle) else { return 0 }
        return Int(String(cString: s)) ?? 0
    }

    public func columnName(_ column: Int) -> String {
        String(cString: PQfname(handle, Int32(column)))
    }

    public func isNull(_ row: Int, _ column: Int) -> Bool {
        PQgetisnull(handle, Int32(row), Int32(column)) == 1
    }

    /// The raw binary value; valid only as long as this result lives.
    @inline(__always)
    public func withRawValue<T, E: Error>(_ row: Int, _ column: Int, _ body: (UnsafeRawBufferPointer) throws(E) -> T) throws(E) -> T {
        let length = Int(PQgetlength(handle, Int32(row), Int32(column)))
        let pointer = UnsafeRawPointer(PQgetvalue(handle, Int32(row), Int32(column)))
        return try body(UnsafeRawBufferPointer(start: pointer, count: length))
    }

    private func fixed<T: FixedWidthInteger>(_ row: Int, _ column: Int, as: T.Type) throws(PGError) -> T {
        guard !isNull(row, column) else {
            throw PGError(.unexpectedResult, message: "column \(columnName(column)) is NULL in row \(row)")
        }
        let value: T? = withRawValue(row, column) { raw in
            guard raw.count == MemoryLayout<T>.size else { return nil }
            return T(bigEndian: raw.loadUnaligned(as: T.self))
        }
        guard let value else {
            throw PGError(.unexpectedResult, message: "column \(columnName(column)) has an unexpected binary width")
        }
        return value
    }

    public func int64(_ row: Int, _ column: Int) throws(PGError) -> Int64 { try fixed(row, column, as: Int64.self) }
    public func int32(_ row: Int, _ column: Int) throws(PGError) -> Int32 { try fixed(row, column, as: Int32.self) }
    /// xid8 and other unsigned 64-bit values.
    public func uint64(_ row: Int, _ column: Int) throws(PGError) -> UInt64 { try fixed(row, column, as: UInt64.self) }
    /// timestamptz in binary: microseconds since 2000-01-01 00:00:00 UTC.
    public func timestampMicros(_ row: Int, _ column: Int) throws(PGError) -> Int64 { try fixed(row, column, as: Int64.self) }

    /// float8 in binary: the IEEE 754 bits, big-endian.
    public func double(_ row: Int, _ column: Int) throws(PGError) -> Double {
        Double(bitPattern: try fixed(row, column, as: UInt64.self))
    }

    public func bool(_ row: Int, _ column: Int) throws(PGError) -> Bool {
        try fixed(row, column, as: UInt8.self) != 0
    }

    public func string(_ row: Int, _ column: Int) -> String? {
        if isNull(row, column) { return nil }
        return withRawValue(row, column) { String(decoding: $0, as: UTF8.self) }
    }

    public func bytes(_ row: Int, _ column: Int) -> [UInt8]? {
        if isNull(row, column) { return nil }
        return withRawValue(row, column) { Array($0) }
    }

    /// Length in bytes of a value (0 for NULL).
    public func length(_ row: Int, _ column: Int) -> Int {
        Int(PQgetlength(handle, Int32(row), Int32(column)))
    }

    /// The elements of a one-dimensional array in binary format, as raw bytes (nil for a NULL
    /// element; an empty list for a NULL array). The buffers point into this result: valid only
    /// as long as it lives. No per-element allocation (the hot path of a claim).
    public func arrayElements(_ row: Int, _ column: Int) throws(PGError) -> [UnsafeRawBufferPointer?] {
        if isNull(row, column) { return [] }
        return try withRawValue(row, column) { raw throws(PGError) -> [UnsafeRawBufferPointer?] in
            try Self.decodeArray(raw) { $0 }
        }
    }

    /// A one-dimensional text (or varchar/name) array in binary format; elements may be NULL.
    public func textArray(_ row: Int, _ column: Int) throws(PGError) -> [String?]? {
        if isNull(row, column) { return nil }
        return try withRawValue(row, column) { raw throws(PGError) -> [String?] in
            try Self.decodeArray(raw) { String(decoding: $0, as: UTF8.self) }
        }
    }

    /// A one-dimensional bytea array in binary format; elements may be NULL.
    public func byteaArray(_ row: Int, _ column: Int) throws(PGError) -> [[UInt8]?]? {
        if isNull(row, column) { return nil }
        return try withRawValue(row, column) { raw throws(PGError) -> [[UInt8]?] in
            try Self.decodeArray(raw) { Array($0) }
        }
    }

    static func decodeArray<E>(_ raw: UnsafeRawBufferPointer, _ element: (UnsafeRawBufferPointer) -> E) throws(PGError) -> [E?] {
        var reader = BinaryReader(raw)
        guard let ndim = reader.int32(), let _ = reader.int32(), let _ = reader.int32() else {
            throw PGError(.unexpectedResult, message: "truncated array header")
        }
        if ndim == 0 { return [] }
        guard ndim == 1, let count = reader.int32(), let _ = reader.int32(), count >= 0 else {
            throw PGError(.unexpectedResult, message: "unsupported array shape (ndim \(ndim))")
        }
        var out: [E?] = []
        out.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let length = reader.int32() else { throw PGError(.unexpectedResult, message: "truncated array") }
            if length < 0 { out.append(nil); continue }
            guard let slice = reader.take(Int(length)) else { throw PGError(.unexpectedResult, message: "truncated array element") }
            out.append(element(slice))
        }
        return out
    }
}

struct BinaryReader {
    let raw: UnsafeRawBufferPointer
    var offset = 0
    init(_ raw: UnsafeRawBufferPointer) { self.raw = raw }
    mutating func int32() -> Int32? {
        guard offset + 4 <= raw.count else { return nil }
        defer { offset += 4 }
        return Int32(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int32.self))
    }
    mutating func take(_ n: Int) -> UnsafeRawBufferPointer? {
        guard n >= 0, offset + n <= raw.count else { return nil }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: raw[offset..<offset + n])
    }
}
