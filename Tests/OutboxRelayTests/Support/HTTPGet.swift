import Foundation
import RelayHTTP
import Metrics
import Prometheus

/// A minimal HTTP/1.1 GET over a loopback socket (status and body), enough for the endpoints.
func httpGet(port: Int, path: String) throws -> (status: Int, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var timeout = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { throw TestFailure("cannot connect to 127.0.0.1:\(port)") }
    let request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    _ = request.withCString { send(fd, $0, strlen($0), 0) }
    var data = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = recv(fd, &chunk, chunk.count, 0)
        if n <= 0 { break }
        data.append(contentsOf: chunk[0..<n])
    }
    let text = String(decoding: data, as: UTF8.self)
    guard let headerEnd = text.range(of: "\r\n\r\n"), let statusLine = text.split(separator: "\r\n").first else {
        throw TestFailure("bad HTTP response: \(text.prefix(200))")
    }
    let status = Int(statusLine.split(separator: " ")[1]) ?? 0
    var body = String(text[headerEnd.upperBound...])
    if text[..<headerEnd.lowerBound].lowercased().contains("transfer-encoding: chunked") { body = dechunk(body) }
    return (status, body)
}

private func dechunk(_ s: String) -> String {
    var out = ""
    var rest = Substring(s)
    while let lineEnd = rest.range(of: "\r\n"), let size = Int(rest[..<lineEnd.lowerBound], radix: 16), size > 0 {
        let start = lineEnd.upperBound
        let bytes = Array(rest[start...].utf8.prefix(size))
        out += String(decoding: bytes, as: UTF8.self)
        rest = rest[start...].dropFirst(String(decoding: bytes, as: UTF8.self).count)
        if rest.hasPrefix("\r\n") { rest = rest.dropFirst(2) }
    }
    return out
}

/// One Prometheus registry for the test process, bootstrapped once (as `main` does in the binary).
enum TestMetrics {
    static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        // The same factory (and histogram buckets) as `outbox-relay run`.
        MetricsSystem.bootstrap(RelayApplication.metricsFactory(registry: registry))
        return registry
    }()

    /// The value of the sample whose line starts with `prefix` (name and labels).
    static func value(_ text: String, _ prefix: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(prefix) {
            if let v = line.split(separator: " ").last.flatMap({ Double($0) }) { return v }
        }
        return nil
    }
}
