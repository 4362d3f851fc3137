import Foundation

/// One fault case's figures, appended as a JSON line to `$OUTBOX_RELIABILITY_OUT`; scripts/test
/// renders them into docs/RELIABILITY.md.
struct FaultReport: Codable {
    var name: String
    var bound: String
    var inserted: Int
    var lost: Int
    var duplicates: Int
    var orderInversions: Int
    var pending: Int
    var deadLettered: Int
    var recoverySeconds: Double?
    var note: String = ""

    init(_ name: String, bound: String, inserted: Int, verification v: Verification, pending: Int, deadLettered: Int,
         recoverySeconds: Double? = nil, note: String = "") {
        self.name = name
        self.bound = bound
        self.inserted = inserted
        self.lost = v.lost.count
        self.duplicates = v.duplicates
        self.orderInversions = v.orderInversions
        self.pending = pending
        self.deadLettered = deadLettered
        self.recoverySeconds = recoverySeconds.map { ($0 * 1000).rounded() / 1000 }
        self.note = note
    }

    func write() {
        guard let path = ProcessInfo.processInfo.environment["OUTBOX_RELIABILITY_OUT"] else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard var line = try? encoder.encode(self) else { return }
        line.append(0x0a)
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else { return }
        handle.seekToEndOfFile()
        handle.write(line)
        try? handle.close()
    }
}

/// Still-pending and dead-lettered counts for a table.
func leftovers(_ table: OutboxRelay.OutboxTable) throws -> (pending: Int, deadLettered: Int) {
    let conn = try TestEnvironment.connect()
    return (Int(try conn.query("SELECT count(*) FROM \(table.sql)").int64(0, 0)),
            Int(try conn.query("SELECT count(*) FROM \(table.deadLetterSQL)").int64(0, 0)))
}

import OutboxRelay
