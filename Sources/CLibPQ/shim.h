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

#endif
