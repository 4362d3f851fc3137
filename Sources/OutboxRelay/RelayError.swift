import Kafka
import PGClient

/// An error of the relay itself: bad configuration, wrong schema, or a wrapped database/Kafka error.
/// Its description names the setting, table, column or row at fault and never carries secrets.
public struct RelayError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String, Sendable { case configuration, schema, database, kafka, internalState }
        fileprivate let base: Base
        private init(_ base: Base) { self.base = base }
        /// A setting is invalid; the message names it.
        public static let configuration = Code(.configuration)
        /// The database objects are missing or have the wrong shape.
        public static let schema = Code(.schema)
        public static let database = Code(.database)
        public static let kafka = Code(.kafka)
        public static let internalState = Code(.internalState)
        public var description: String { base.rawValue }
    }

    public let code: Code
    public let message: String
    /// An established database connection broke (not: could not connect at all): worth retrying.
    public private(set) var connectionLost = false
    /// A momentary database condition (timeout under load, too many connections): worth retrying.
    public private(set) var transient = false

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = Redaction.redact(message)
    }

    public init(database error: PGError, context: String) {
        self.init(.database, "\(context): \(error)")
        connectionLost = error.isBrokenConnection
        transient = error.isTransient
    }

    public init(kafka error: KafkaError, context: String) {
        self.init(.kafka, "\(context): \(error)")
    }

    public var description: String { message }
}
