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

    public init(topic: String, capacity: Int = 0) {
        self.topic = topic
        storage.reserveCapacity(capacity)
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

    public mutating func addHeader(name: String, value: String) {
        var v = value
        v.withUTF8 { addHeader(name: name, value: UnsafeRawBufferPointer($0)) }
    }

    /// Bytes this message occupies in librdkafka's queue (key + value + headers).
    public var byteCount: Int { storage.count }

    public var keyBytes: [UInt8]? { key.map { Array(storage[$0]) } }
    public var valueBytes: [UInt8]? { value.map { Array(storage[$0]) } }
    public var headerList: [(String, [UInt8]?)] {
        headers.map { (String(decoding: storage[$0.name], as: UTF8.self), $0.value.map { Array(storage[$0]) }) }
    }
}
