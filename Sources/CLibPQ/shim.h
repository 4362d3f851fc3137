#ifndef OUTBOX_CLIBPQ_SHIM_H
#define OUTBOX_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#include <poll.h>

/* PG_DIAG_* are character-literal macros ('C'); Swift does not import them, so re-export. */
static const int outbox_pg_diag_sqlstate = PG_DIAG_SQLSTATE;
static const int outbox_pg_diag_message_primary = PG_DIAG_MESSAGE_PRIMARY;
static const int outbox_pg_diag_message_detail = PG_DIAG_MESSAGE_DETAIL;
static const int outbox_pg_diag_severity_nonlocalized = PG_DIAG_SEVERITY_NONLOCALIZED;
static const int outbox_pg_diag_table_name = PG_DIAG_TABLE_NAME;
static const int outbox_pg_diag_column_name = PG_DIAG_COLUMN_NAME;

/* Waits up to `nanos` nanoseconds for `fd` to become readable, to the nanosecond: ppoll(2), which
   glibc declares only with _GNU_SOURCE (Swift's Glibc module leaves it out), through syscall(2).
   poll(2) counts whole milliseconds; a linger of 6.4 ms slept as poll plus nanosleep woke its
   thread twice. Returns > 0 when readable, 0 on timeout, -1 with errno (EINTR) otherwise. */
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static inline int outbox_wait_readable(int fd, long long nanos) {
    struct pollfd p = { fd, POLLIN, 0 };
    struct timespec ts = { (time_t)(nanos / 1000000000LL), (long)(nanos % 1000000000LL) };
    return (int)syscall(SYS_ppoll, &p, (nfds_t)1, &ts, (void *)0, (size_t)8);
}

#endif
