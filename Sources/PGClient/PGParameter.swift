/// PostgreSQL type OIDs used by this client (`pg_type_d.h` is not installed with libpq-dev).
public enum PGType {
    public static let bool: UInt32 = 16
    public static let bytea: UInt32 = 17
    public static let int8: UInt32 = 20
    public static let float8: UInt32 = 701
    public static let int4: UInt32 = 23
    public static let text: UInt32 = 25
    public static let jsonb: UInt32 = 3802
    public static let timestamptz: UInt32 = 1184
    public static let int4Array: UInt32 = 1007
    public static let int8Array: UInt32 = 1016
    public static let textArray: UInt32 = 1009
}

/// A statement parameter, always sent in binary format with an explicit type OID so the
/// server never has to guess.
public enum PGParameter: Sendable {
    case null(oid: UInt32)
    case int8(Int64)
    case int4(Int32)
    case float8(Double)
    case bool(Bool)
    case text(String)
    case bytea([UInt8])
    case jsonb(String)
    case int8Array([Int64])
    case int4Array([Int32])

    /// An optional byte string: NULL when `nil`.
    public static func bytea(_ bytes: [UInt8]?) -> PGParameter {
        bytes.map { .bytea($0) } ?? .null(oid: PGType.bytea)
    }

    public var oid: UInt32 {
        switch self {
        case .null(let oid): return oid
        case .int8: return PGType.int8
        case .int4: return PGType.int4
        case .float8: return PGType.float8
        case .bool: return PGType.bool
        case .text: return PGType.text
        case .bytea: return PGType.bytea
        case .jsonb: return PGType.jsonb
        case .int8Array: return PGType.int8Array
        case .int4Array: return PGType.int4Array
        }
    }

    /// Appends the binary wire form to `buffer`; returns false for NULL.
    func encode(into buffer: inout [UInt8]) -> Bool {
        switch self {
        case .null: return false
        case .int8(let v): buffer.appendBigEndian(v)
        case .int4(let v): buffer.appendBigEndian(v)
        case .float8(let v): buffer.appendBigEndian(v.bitPattern)
        case .bool(let v): buffer.append(v ? 1 : 0)
        case .text(let s): buffer.append(contentsOf: s.utf8)
        case .bytea(let b): buffer.append(contentsOf: b)
        case .jsonb(let s):
            buffer.append(1)  // jsonb binary format version
            buffer.append(contentsOf: s.utf8)
        case .int8Array(let values):
            Self.encodeArray(values, elementOID: PGType.int8, elementSize: 8, into: &buffer)
        case .int4Array(let values):
            Self.encodeArray(values, elementOID: PGType.int4, elementSize: 4, into: &buffer)
        }
        return true
    }

    /// Binary array layout: ndim, has-null flag, element OID, per dimension (length, lower
    /// bound), then per element a length and the big-endian value.
    private static func encodeArray<T: FixedWidthInteger>(
        _ values: [T], elementOID: UInt32, elementSize: Int32, into buffer: inout [UInt8]
    ) {
        buffer.reserveCapacity(buffer.count + 20 + values.count * (4 + Int(elementSize)))
        if values.isEmpty {
            buffer.appendBigEndian(Int32(0))  // ndim 0 = empty array
            buffer.appendBigEndian(Int32(0))
            buffer.appendBigEndian(elementOID)
            return
        }
        buffer.appendBigEndian(Int32(1))
        buffer.appendBigEndian(Int32(0))
        buffer.appendBigEndian(elementOID)
        buffer.appendBigEndian(Int32(values.count))
        buffer.appendBigEndian(Int32(1))
        for v in values {
            buffer.appendBigEndian(elementSize)
            buffer.appendBigEndian(v)
        }
    }
}

extension Array where Element == UInt8 {
    @inline(__always)
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}
