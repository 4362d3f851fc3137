import Foundation
import Hummingbird
import InMemoryTracing
import Kafka
import OutboxRelay
import PGClient
import RelayHTTP
import ServiceLifecycle
import Synchronization
import Testing
import Tracing

/// A span per relayed row: continuing the row's trace, carried on in the produced message, with
/// the messaging attributes and the delivery's place; failures end their span with an error.
@Suite(.serialized) struct TracingTests {
    @Test func eachRelayedRowGetsAProducerSpanThatContinuesTheRowsTrace() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let tracer = InMemoryTracer()
        var config = TestEnvironment.configuration(table: table)
        config.tracer = tracer
        config.kafkaProperties = [("message.max.bytes", "10000")]
        let conn = try TestEnvironment.connect()
        // A row carrying the application's trace context (the in-memory tracer's propagation
        // keys; with OTel it is `traceparent`, see below), a row without any, and a row the
        // producer refuses (over message.max.bytes): dead-lettered, its span ended with the error.
        let traced = try conn.query("""
            INSERT INTO \(table.sql) (topic, key, value, headers)
            VALUES ($1, 'k1', 'v1', '{"in-memory-trace-id": "app-trace", "in-memory-span-id": "app-span"}') RETURNING id
            """, [.text(topic)]).int64(0, 0)
        let plain = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'k2', 'v2') RETURNING id",
                                   [.text(topic)]).int64(0, 0)
        let tooLarge = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'k3', convert_to(repeat('x', 20000), 'UTF8')) RETURNING id",
                                      [.text(topic)]).int64(0, 0)
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("outbox drained") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()

        let spans = tracer.finishedSpans
        #expect(spans.count == 3, "\(spans.map(\.operationName))")
        func span(_ id: Int64) -> FinishedInMemorySpan? {
            spans.first { $0.attributes["messaging.message.id"]?.toSpanAttribute() == .string("\(id)") }
        }
        let v = try Verification.verify(topics: [topic], expectedIds: [traced, plain])
        #expect(v.lost.isEmpty && v.duplicates == 0, "\(v)")

        let t = try #require(span(traced))
        #expect(t.operationName == "send \(topic)")
        #expect(t.kind == .producer)
        #expect(t.traceID == "app-trace", "continues the row's trace")
        #expect(t.parentSpanID == "app-span", "a child of the application's span")
        #expect(t.attributes["messaging.system"]?.toSpanAttribute() == .string("kafka"))
        #expect(t.attributes["messaging.destination.name"]?.toSpanAttribute() == .string(topic))
        #expect(t.attributes["messaging.kafka.message.key"]?.toSpanAttribute() == .string("k1"))
        #expect(t.status == nil && t.errors.isEmpty)
        // The produced message carries the relay's span (once), so a consumer continues from it.
        let m = try #require(v.messagesById[traced])
        #expect(m.header("in-memory-trace-id") == "app-trace")
        #expect(m.header("in-memory-span-id") == t.spanID)
        #expect(m.headers.filter { $0.name == "in-memory-span-id" }.count == 1, "the row's own span id is replaced, not repeated")
        #expect(t.attributes["messaging.destination.partition.id"]?.toSpanAttribute() == .string("\(m.partition)"))
        #expect(t.attributes["messaging.kafka.offset"]?.toSpanAttribute() == .int64(m.offset))

        let p = try #require(span(plain))
        #expect(p.parentSpanID == nil, "a row without trace context starts a trace")
        #expect(p.traceID != "app-trace")

        let refused = try #require(span(tooLarge))
        #expect(refused.status?.code == .error)
        #expect(refused.attributes["error.type"]?.toSpanAttribute() == .string("MSG_SIZE_TOO_LARGE"))
        #expect(!refused.errors.isEmpty)
        #expect(try conn.query("SELECT count(*) FROM \(table.deadLetterSQL) WHERE id = $1", [.int8(tooLarge)]).int64(0, 0) == 1)
    }

    /// `--tracing otlp`: swift-otel's tracer reads and writes W3C `traceparent`, and its exporter
    /// sends the spans over OTLP/HTTP — here to a collector stand-in that records the requests.
    @Test func otlpTracingContinuesTraceparentAndExportsSpans() async throws {
        let collector = try await OTLPCollector.start()
        defer { collector.stop() }
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        var config = TestEnvironment.configuration(table: table)
        config.httpHost = "127.0.0.1"
        config.httpPort = 0
        config.tracing = .otlp
        let backend = try RelayApplication.otlpTracing(logger: TestEnvironment.logger,
                                                       endpoint: "http://127.0.0.1:\(collector.port)/v1/traces")
        config.tracer = backend.tracer
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        let id = try TestEnvironment.connect().query("""
            INSERT INTO \(table.sql) (topic, key, value, headers)
            VALUES ($1, 'k', 'v', jsonb_build_object('traceparent', '00-\(traceID)-00f067aa0ba902b7-01')) RETURNING id
            """, [.text(topic)]).int64(0, 0)
        let application = try await RelayApplication.build(configuration: config, registry: TestMetrics.registry,
                                                           logger: TestEnvironment.logger)
        let group = ServiceGroupRunner(application.serviceGroup(logger: TestEnvironment.logger, signals: false),
                                       extra: backend.service)
        try await TestEnvironment.eventually("outbox drained") { try TestEnvironment.count(table) == 0 }
        try await TestEnvironment.eventually("the span exported over OTLP/HTTP") {
            collector.bodies.contains { $0.contains(Array("send \(topic)".utf8)) }
        }
        await group.stop(application)

        let v = try Verification.verify(topics: [topic], expectedIds: [id])
        let header = try #require(v.messagesById[id]?.header("traceparent"))
        let parts = header.split(separator: "-")
        #expect(parts.count == 4 && parts[0] == "00")
        #expect(parts[1] == Substring(traceID), "same trace as the row")
        #expect(parts[2] != "00f067aa0ba902b7", "the relay's own span id, not the application's")
        #expect(parts[3] == "01", "sampled flag carried on")
        let exported = try #require(collector.bodies.first { $0.contains(Array("send \(topic)".utf8)) })
        #expect(exported.contains(hex: traceID), "the exported span belongs to the row's trace")
    }
}

extension Array where Element == UInt8 {
    func contains(_ needle: [UInt8]) -> Bool {
        guard needle.count <= count else { return false }
        return (0...(count - needle.count)).contains { self[$0..<($0 + needle.count)].elementsEqual(needle) }
    }
    /// Whether the bytes of hex string `hex` occur (protobuf carries trace ids as raw bytes).
    func contains(hex: String) -> Bool {
        var bytes: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex, let j = hex.index(i, offsetBy: 2, limitedBy: hex.endIndex) {
            bytes.append(UInt8(hex[i..<j], radix: 16) ?? 0)
            i = j
        }
        return contains(bytes)
    }
}

/// Runs a relay's service group plus one more service (the OTLP exporter), stopped together.
struct ServiceGroupRunner {
    let task: Task<Void, Error>
    let extraTask: Task<Void, Error>
    init(_ group: ServiceGroup, extra: any Service) {
        task = Task { try await group.run() }
        extraTask = Task { try await extra.run() }
    }
    func stop(_ application: RelayApplication) async {
        application.relay.shutdown()
        task.cancel()
        _ = try? await task.value
        extraTask.cancel()
        _ = try? await extraTask.value
    }
}

/// An OTLP/HTTP endpoint that accepts every export and keeps the request bodies.
final class OTLPCollector: Sendable {
    let received = Mutex<[[UInt8]]>([])
    let boundPort = Mutex<Int?>(nil)
    let task = Mutex<Task<Void, Error>?>(nil)
    var bodies: [[UInt8]] { received.withLock { $0 } }
    var port: Int { boundPort.withLock { $0 } ?? 0 }

    static func start() async throws -> OTLPCollector {
        let collector = OTLPCollector()
        let router = Router()
        router.post("v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 64 << 20)
            collector.received.withLock { $0.append(Array(buffer: body)) }
            return Response(status: .ok, headers: [.contentType: "application/x-protobuf"])
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in collector.boundPort.withLock { $0 = channel.localAddress?.port } })
        collector.task.withLock { $0 = Task { try await app.runService() } }
        try await TestEnvironment.eventually("OTLP collector listening") { collector.port > 0 }
        return collector
    }

    func stop() { task.withLock { $0?.cancel() } }
}
