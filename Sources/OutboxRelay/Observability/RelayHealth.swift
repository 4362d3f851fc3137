/// What `/healthz` and `/readyz` report.
public struct RelayHealth: Sendable, Codable, Equatable {
    public struct Check: Sendable, Codable, Equatable {
        public let ok: Bool
        public let detail: String
    }
    /// Loops alive (liveness).
    public let alive: Bool
    public let ready: Bool
    public let checks: [String: Check]
    public let replica: String
}
