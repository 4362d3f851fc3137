import Foundation
import Testing

/// The `outbox-relay` executable, run as a child process with its output captured to a file.
final class RelayProcess {
    let process = Process()
    let outputPath: String

    static var binary: String {
        ProcessInfo.processInfo.environment["OUTBOX_RELAY_BINARY"] ?? ".build/debug/outbox-relay"
    }

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("relay-\(UUID().uuidString).log").path
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        let out = FileHandle(forWritingAtPath: outputPath)!
        process.executableURL = URL(fileURLWithPath: Self.binary)
        // Several relays run at once in the tests: let each pick a free HTTP port.
        process.arguments = arguments.first == "run" && !arguments.contains("--http-port") ? arguments + ["--http-port", "0"] : arguments
        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardOutput = out
        process.standardError = out
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    func signal(_ sig: Int32) { kill(pid, sig) }

    /// A test that fails (throws) before terminating its relay must not leave it running: it
    /// would keep polling the shared database and skew later tests and benchmarks.
    /// Its output file goes with it: a test reads ``output`` while it runs (a failing expectation
    /// prints it then), and a suite starts hundreds of relays.
    deinit {
        if process.isRunning {
            kill(pid, SIGCONT)
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: outputPath)
    }

    /// Sends SIGTERM and waits for the exit status.
    @discardableResult
    func terminate() -> Int32 {
        signal(SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    func kill9() {
        signal(SIGKILL)
        process.waitUntilExit()
    }

    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// `run` arguments for a table with the test's timings.
    static func runArguments(table: String, brokers: String = TestEnvironment.brokers, extra: [String] = []) -> [String] {
        ["run", "--database-url", TestEnvironment.databaseURL, "--brokers", brokers, "--table", table,
         "--lease-duration-ms", "6000", "--heartbeat-interval-ms", "300", "--message-timeout-ms", "2000",
         "--statement-timeout-ms", "1000", "--poll-interval-ms", "200", "--batch-size", "500",
         "--max-in-flight-rows", "2000", "--shutdown-timeout-ms", "5000"] + extra
    }
}

/// A Tansu broker of the test's own (to pause or kill without disturbing other tests).
final class PrivateBroker {
    private(set) var process = Process()
    let port: Int
    let storage: String
    let environment: [String: String]

    static var tools: String { ProcessInfo.processInfo.environment["OUTBOX_TEST_TOOLS"] ?? ".tools" }

    init(storage: String = "memory://tansu/", environment: [String: String] = [:]) throws {
        port = try freePort()
        self.storage = storage
        self.environment = environment
        try launch()
    }

    private func launch() throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.tools + "/bin/tansu")
        process.arguments = ["broker", "--listener-url", "tcp://127.0.0.1:\(port)",
                             "--advertised-listener-url", "tcp://127.0.0.1:\(port)", "--storage-engine", storage]
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try waitForPort(port, what: "Tansu")
    }

    var brokers: String { "127.0.0.1:\(port)" }
    func pause() { kill(process.processIdentifier, SIGSTOP) }
    func resume() { kill(process.processIdentifier, SIGCONT) }

    /// Stops the broker (SIGKILL: a crash; memory storage needs no shutdown).
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// kill -9, then start again on the same port with the same storage.
    func crashAndRestart() throws {
        stop()
        try launch()
    }

    deinit { stop() }
}

/// A loopback S3 (moto_server) with a `tansu` bucket, so Tansu keeps its data across restarts.
final class MotoS3 {
    let process = Process()
    let port: Int

    init() throws {
        port = try freePort()
        let venv = PrivateBroker.tools + "/venv/bin"
        process.executableURL = URL(fileURLWithPath: venv + "/moto_server")
        process.arguments = ["-H", "127.0.0.1", "-p", String(port)]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try waitForPort(port, what: "moto_server")
        try PrivatePostgres.shell("""
            AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_DEFAULT_REGION=us-east-1 \(venv)/python -c \
              "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:\(port)').create_bucket(Bucket='tansu')"
            """)
    }

    var tansuEnvironment: [String: String] {
        ["AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_ENDPOINT": "http://127.0.0.1:\(port)", "AWS_ALLOW_HTTP": "true"]
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

func waitForPort(_ port: Int, what: String) throws {
    let deadline = Date().addingTimeInterval(30)
    while !canConnect(port) {
        if Date() > deadline { throw TestFailure("\(what) did not listen on \(port)") }
        Thread.sleep(forTimeInterval: 0.05)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard ok else { throw TestFailure("no free port") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

func canConnect(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// A PostgreSQL cluster of the test's own (to restart or crash without disturbing other tests),
/// started with the same script functions scripts/test uses.
final class PrivatePostgres {
    let runDir: String
    let url: String
    private static var servicesScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/lib/services.sh").path
    }

    init() throws {
        runDir = "/tmp/outbox-pg-\(UUID().uuidString.prefix(8))"
        url = try Self.shell("source \(Self.servicesScript); export OUTBOX_RUN_DIR=\(runDir); mkdir -p $OUTBOX_RUN_DIR; start_postgres; echo $OUTBOX_TEST_DATABASE_URL")
            .split(separator: "\n").last.map(String.init) ?? ""
        guard url.hasPrefix("postgresql://") else { throw TestFailure("private PostgreSQL did not start: \(url)") }
    }

    /// `pg_ctl restart` with the given mode (`fast`, or `immediate` for a crash-stop).
    func restart(mode: String) throws {
        _ = try Self.shell("source \(Self.servicesScript); as_pg_user \"$PG_BIN/pg_ctl\" -D \(runDir)/pgdata -m \(mode) -w -t 30 -l \(runDir)/postgres.log restart >/dev/null")
    }

    deinit {
        _ = try? Self.shell("source \(Self.servicesScript); as_pg_user \"$PG_BIN/pg_ctl\" -D \(runDir)/pgdata -m immediate stop >/dev/null 2>&1; rm -rf \(runDir)")
    }

    /// Runs a bash script and returns its output. Uses system(3): Foundation's Process can hang
    /// in waitUntilExit when the script leaves a daemon (postgres) running.
    @discardableResult
    static func shell(_ script: String) throws -> String {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("sh-\(UUID().uuidString)").path
        try script.write(toFile: base + ".sh", atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: base + ".sh"); try? FileManager.default.removeItem(atPath: base + ".out") }
        let status = system("/bin/bash \(base).sh > \(base).out 2>&1 < /dev/null")
        let text = ((try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard status == 0 else { throw TestFailure("shell failed (\(status)): \(text.suffix(500))") }
        return text
    }
}
