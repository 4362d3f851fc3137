/// One message to produce. Key, value and headers live in one contiguous buffer so a message
/// costs two allocations however many headers it has; librdkafka copies the bytes once
/// (`RD_KAFKA_MSG_F_COPY`) when it is produced.
public struct KafkaMessage: Sendable {
    public let topic: String
    @usableFromInline var storage: [UInt8] = []
    @usableFromInline var key: Range<Int>?
    @usableFromInline var value: Range<Int>?
    /// Header name ranges exclude the NUL terminator stored after each name.
    @usableFromInline var headers: [(name: Range<Int>, value: Range<Int>?)] = []

    /// - Parameters:
    ///   - capacity: bytes of key, value and headers (with a NUL per header name) to reserve,
    ///     so that building the message allocates its buffer once.
    ///   - headerCapacity: headers to reserve room for.
    public init(topic: String, capacity: Int = 0, headerCapacity: Int = 0) {
        self.topic = topic
        storage.reserveCapacity(capacity)
        headers.reserveCapacity(headerCapacity)
    }

    /// A message from Swift values (tests, demo, dead-letter topic).
    public init(topic: String, key: [UInt8]?, value: [UInt8]?, headers: [(String, [UInt8]?)] = []) {
        self.init(topic: topic)
        if let key { key.withUnsafeBytes { setKey($0) } }
        if let value { value.withUnsafeBytes { setValue($0) } }
        for (name, v) in headers {
            if let v { v.withUnsafeBytes { addHeader(name: name, value: $0) } } else { addHeader(name: name, value: nil) }
        }
    }

    @inline(__always)
    private mutating func append(_ bytes: UnsafeRawBufferPointer) -> Range<Int> {
        let start = storage.count
        storage.append(contentsOf: bytes)
        return start..<storage.count
    }

    public mutating func setKey(_ bytes: UnsafeRawBufferPointer) { key = append(bytes) }
    public mutating func setValue(_ bytes: UnsafeRawBufferPointer) { value = append(bytes) }

    public mutating func addHeader(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) {
        let n = append(name)
        storage.append(0)
        headers.append((n, value.map { append($0) }))
    }

    public mutating func addHeader(name: String, value: UnsafeRawBufferPointer?) {
        var name = name
        name.withUTF8 { addHeader(name: UnsafeRawBufferPointer($0), value: value) }
    }

    /// A header whose value is `number` in decimal, formatted without an intermediate String.
    public mutating func addHeader(name: String, decimal number: Int64) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var n = number.magnitude
            var i = 20
            repeat {
                i -= 1
                digits[i] = UInt8(truncatingIfNeeded: n % 10) + 48
                n /= 10
            } while n > 0
            if number < 0 { i -= 1; digits[i] = 45 }
            addHeader(name: name, value: UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: digits[i..<20])))
        }
    }

    public mutating func addHeader(name: String, value: String) {
        var v = value
        v.withUTF8 { addHeader(name: name, value: UnsafeRawBufferPointer($0)) }
    }

    /// The first header whose name equals `name`, ignoring ASCII case (W3C trace-context header
    /// names are case-insensitive; applications write `traceparent` or `Traceparent`).
    public func headerValue(named name: String) -> String? {
        let wanted = Self.lowercasedName(name)
        guard let h = headers.first(where: { Self.nameMatches($0.name, wanted, in: storage) }) else { return nil }
        return h.value.map { String(decoding: storage[$0], as: UTF8.self) }
    }

    /// Sets header `name` to `value`, dropping every earlier header of that name (ASCII case
    /// ignored), so that a consumer reading the first or the last occurrence sees this value.
    public mutating func replaceHeader(name: String, value: String) {
        let wanted = Self.lowercasedName(name)
        let store = storage
        headers.removeAll { Self.nameMatches($0.name, wanted, in: store) }
        addHeader(name: name, value: value)
    }

    private static func lowercasedName(_ name: String) -> [UInt8] { name.utf8.map(lowercased) }

    /// Whether the header name stored at `range` equals `wanted` (already lowercased), ignoring ASCII case.
    private static func nameMatches(_ range: Range<Int>, _ wanted: [UInt8], in storage: [UInt8]) -> Bool {
        range.count == wanted.count && zip(storage[range], wanted).allSatisfy { lowercased($0) == $1 }
    }

    @inline(__always)
    private static func lowercased(_ b: UInt8) -> UInt8 { (b >= 65 && b <= 90) ? b + 32 : b }

    /// Bytes this message occupies in librdkafka's queue (key + value + headers).
    public var byteCount: Int { storage.count }

    public var keyBytes: [UInt8]? { key.map { Array(storage[$0]) } }
    public var valueBytes: [UInt8]? { value.map { Array(storage[$0]) } }
    public var headerList: [(String, [UInt8]?)] {
        headers.map { (String(decoding: storage[$0.name], as: UTF8.self), $0.value.map { Array(storage[$0]) }) }
    }
}
