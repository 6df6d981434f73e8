/*
 * loopback_guard: an LD_PRELOAD shim that keeps a process's network traffic on loopback.
 *
 * Every sendto/sendmsg/sendmmsg/connect to an IPv4 or IPv6 address outside loopback
 * (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104) is refused with EPERM before it reaches the
 * kernel, and recorded as one line in the file named by SAFERULE_NET_GUARD_LOG. Calls to
 * loopback are counted in SAFERULE_NET_GUARD_LOG".ok" (one byte per call batch is enough
 * to show the guard was active). The test suite runs under it and fails if the log is not empty.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int is_loopback(const struct sockaddr *addr) {
    if (addr == NULL) return 1; /* connected socket: its peer was checked at connect() */
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)addr;
        return (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return in6->sin6_addr.s6_addr[12] == 127;
        return 0;
    }
    return 1; /* AF_UNIX, AF_NETLINK, ...: not network traffic */
}

static void note(const char *suffix, const char *line) {
    const char *base = getenv("SAFERULE_NET_GUARD_LOG");
    if (base == NULL) return;
    char path[4096];
    snprintf(path, sizeof path, "%s%s", base, suffix);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, strlen(line));
    (void)ignored;
    close(fd);
}

static int refuse(const char *call, const struct sockaddr *addr) {
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host);
        port = ntohs(in4->sin_port);
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
    }
    char line[256];
    snprintf(line, sizeof line, "pid %d %s to %s port %d refused\n", (int)getpid(), call, host, port);
    note("", line);
    errno = EPERM;
    return -1;
}

static int seen_loopback = 0;

static void mark_ok(void) {
    if (!seen_loopback) {
        seen_loopback = 1;
        char line[64];
        snprintf(line, sizeof line, "pid %d\n", (int)getpid());
        note(".ok", line);
    }
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "sendto");
    if (!is_loopback(addr)) return refuse("sendto", addr);
    if (addr) mark_ok();
    return real(fd, buf, len, flags, addr, alen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (!real) real = dlsym(RTLD_NEXT, "sendmsg");
    const struct sockaddr *addr = msg ? (const struct sockaddr *)msg->msg_name : NULL;
    if (!is_loopback(addr)) return refuse("sendmsg", addr);
    if (addr) mark_ok();
    return real(fd, msg, flags);
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int n, int flags) {
    static int (*real)(int, struct mmsghdr *, unsigned int, int);
    if (!real) real = dlsym(RTLD_NEXT, "sendmmsg");
    for (unsigned int i = 0; i < n; i++) {
        const struct sockaddr *addr = (const struct sockaddr *)vec[i].msg_hdr.msg_name;
        if (!is_loopback(addr)) return refuse("sendmmsg", addr);
    }
    return real(fd, vec, n, flags);
}

int connect(int fd, const struct sockaddr *addr, socklen_t alen) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    if (!is_loopback(addr)) return refuse("connect", addr);
    return real(fd, addr, alen);
}
