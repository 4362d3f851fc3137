#ifndef OUTBOX_CTIMERFD_SHIM_H
#define OUTBOX_CTIMERFD_SHIM_H
/* Linux timerfd, which Swift's Glibc module does not include (WakeTimer.swift). */
#include <sys/timerfd.h>
#include <time.h>
#endif
