#if canImport(Glibc)
import Glibc
#endif

/// Names the calling OS thread (what `top -H`, `ps -L` and perf show; at most 15 bytes on
/// Linux). Foundation's `Thread.name` set before `start()` does not reach the kernel here: the
/// relay's threads all showed as the Dispatch thread that spawned them. Glibc's
/// `pthread_setname_np` is not visible to Swift without `_GNU_SOURCE`, so this writes the
/// thread's `comm` file, which is what that function does too.
public func nameCurrentThread(_ name: String) {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    #endif
}
