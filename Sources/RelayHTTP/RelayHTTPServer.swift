import Foundation
import Hummingbird
import Logging
import OutboxRelay
import Prometheus
import ServiceLifecycle
import Synchronization

/// The relay's small HTTP server: `/healthz` (liveness), `/readyz` (readiness, JSON body naming
/// the failing check), `/metrics` (Prometheus text format from the registry `main` bootstrapped).
public final class RelayHTTPServer: Service, Sendable {
    private let relay: Relay
    private let registry: PrometheusCollectorRegistry
    private let host: String
    private let port: Int
    private let logger: Logger
    private let boundPort = Mutex<Int?>(nil)

    public init(relay: Relay, registry: PrometheusCollectorRegistry, host: String = "0.0.0.0", port: Int, logger: Logger) {
        self.relay = relay
        self.registry = registry
        self.host = host
        self.port = port
        self.logger = logger
    }

    /// The port actually bound (useful with port 0), once the server runs.
    public var listeningPort: Int? { boundPort.withLock { $0 } }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    public func run() async throws {
        let router = Router()
        let relay = self.relay
        let registry = self.registry
        router.get("healthz") { _, _ -> Response in
            let h = await relay.health()
            return Self.json(["alive": h.alive], status: h.alive ? .ok : .serviceUnavailable)
        }
        router.get("readyz") { _, _ -> Response in
            let h = await relay.health()
            return Self.json(h, status: h.ready ? .ok : .serviceUnavailable)
        }
        router.get("metrics") { _, _ -> Response in
            var buffer: [UInt8] = []
            buffer.reserveCapacity(16_384)
            registry.emit(into: &buffer)
            buffer.append(contentsOf: Array(relay.ackLatencyMetricText().utf8))
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .notice)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "outbox-relay"),
            onServerRunning: { [self, logger] channel in
                let p = channel.localAddress?.port
                self.boundPort.withLock { $0 = p }
                logger.info("HTTP endpoints listening", metadata: ["http.port": "\(p ?? -1)"])
            },
            logger: quiet)
        try await app.run()
    }
}
