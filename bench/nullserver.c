/*
 * The null WebSocket server: the floor of bench/run.py's table.
 *
 * One thread, one epoll loop, non-blocking sockets, and nothing a real server
 * does beyond the protocol's minimum: the upgrade (path and
 * Sec-WebSocket-Key read, Sec-WebSocket-Accept computed), unmasking, and
 * answers. No UTF-8 validation, no limits but a frame's size, no timers but
 * the optional heartbeat. What it costs per message, per connection and per
 * delivery is the kernel's loopback TCP and this loop: the cost under any
 * WebSocket server, which the other servers' figures stand on.
 *
 *   /echo  every text or binary message back to its sender
 *   /sub   subscribes, then sends the text "ok"
 *   /pub   every message to every subscriber
 * A close frame is answered with a close frame carrying the same code, then
 * the socket is closed; a ping with a pong. Output is queued per connection
 * and written once per loop iteration (one write for all that one read of
 * the publisher brought to a subscriber), as the servers measured beside it
 * cork their output.
 *
 * Usage: nullserver --host 127.0.0.1 --port N [--ping-interval SEC]
 *   --ping-interval: every SEC seconds, a ping to every open connection.
 * SIGTERM ends it at once.
 *
 * Build: gcc -O2 -o bench/.build/nullserver bench/nullserver.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "wsaccept.h"

enum { R_NONE, R_ECHO, R_SUB, R_PUB };

#define RBUF_SIZE (256 * 1024)   /* shared read buffer */
#define MAX_HEADER 8192          /* an upgrade request larger than this is refused */
#define MAX_FRAME (16u << 20)    /* a frame larger than this closes the connection */

typedef struct conn {
    int fd;
    unsigned char role;          /* R_NONE until the upgrade */
    unsigned char want_out;      /* EPOLLOUT registered */
    unsigned char dirty;         /* on the flush list */
    unsigned char closing;       /* close after the output is written */
    int sub_index;               /* place in subs[], -1 if not a subscriber */
    unsigned char *in;           /* bytes of an incomplete request or frame */
    size_t in_len, in_cap;
    unsigned char *out;          /* output not written yet */
    size_t out_off, out_len, out_cap;
} conn_t;

static conn_t **conns;           /* by file descriptor */
static int max_fds;
static conn_t **subs;
static int n_subs, cap_subs;
static conn_t **dirty;
static int n_dirty, cap_dirty;
static int ep;
static unsigned char rbuf[RBUF_SIZE];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void *grow(void *p, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    p = realloc(p, c * item);
    if (!p)
        die("realloc");
    *cap = c;
    return p;
}

static void mark_dirty(conn_t *c)
{
    if (c->dirty)
        return;
    size_t cap = (size_t)cap_dirty;
    dirty = grow(dirty, &cap, (size_t)n_dirty + 1, sizeof *dirty);
    cap_dirty = (int)cap;
    dirty[n_dirty++] = c;
    c->dirty = 1;
}

static void queue(conn_t *c, const void *data, size_t n)
{
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    c->out = grow(c->out, &c->out_cap, c->out_len + n, 1);
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    mark_dirty(c);
}

/* An unmasked server frame header for a payload of n bytes; returns its length. */
static size_t frame_header(unsigned char *h, int opcode, size_t n)
{
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

/* Queues a frame whose header h (hl bytes) is already built. */
static void queue_built(conn_t *c, const unsigned char *h, size_t hl,
                        const unsigned char *payload, size_t n)
{
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    c->out = grow(c->out, &c->out_cap, c->out_len + hl + n, 1);
    memcpy(c->out + c->out_len, h, hl);
    memcpy(c->out + c->out_len + hl, payload, n);
    c->out_len += hl + n;
    mark_dirty(c);
}

static void queue_frame(conn_t *c, int opcode, const unsigned char *payload, size_t n)
{
    unsigned char h[10];
    queue_built(c, h, frame_header(h, opcode, n), payload, n);
}

static void unsubscribe(conn_t *c)
{
    if (c->sub_index < 0)
        return;
    conn_t *last = subs[--n_subs];
    subs[c->sub_index] = last;
    last->sub_index = c->sub_index;
    c->sub_index = -1;
}

static void conn_free(conn_t *c)
{
    unsubscribe(c);
    if (c->dirty) {   /* off the flush list */
        for (int i = 0; i < n_dirty; i++)
            if (dirty[i] == c) {
                dirty[i] = dirty[--n_dirty];
                break;
            }
    }
    conns[c->fd] = NULL;
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Writes what is queued; returns -1 when the connection was closed. */
static int flush(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = c->fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = 1;
            }
            return 0;
        }
        conn_free(c);
        return -1;
    }
    c->out_off = c->out_len = 0;
    if (c->out_cap > 65536) {   /* a burst's buffer is not kept */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = 0;
    }
    if (c->closing) {
        conn_free(c);
        return -1;
    }
    return 0;
}

static void refuse(conn_t *c, const char *status)
{
    char resp[128];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 %s\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n", status);
    queue(c, resp, (size_t)n);
    c->closing = 1;
}

/* The value of header name (case-insensitive) in the request head, or NULL. */
static const char *header(const char *head, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *end = strstr(v, "\r\n");
            while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            *len = (size_t)(end - v);
            return v;
        }
    }
    return NULL;
}

/* Handles a complete request head of n bytes (NUL-terminated in place). */
static void upgrade(conn_t *c, char *head)
{
    int role = R_NONE;
    if (strncmp(head, "GET /echo ", 10) == 0)
        role = R_ECHO;
    else if (strncmp(head, "GET /sub ", 9) == 0)
        role = R_SUB;
    else if (strncmp(head, "GET /pub ", 9) == 0)
        role = R_PUB;
    if (role == R_NONE) {
        refuse(c, "404 Not Found");
        return;
    }
    size_t kl;
    const char *key = header(head, "Sec-WebSocket-Key", &kl);
    if (!key || kl == 0 || kl > 64) {
        refuse(c, "400 Bad Request");
        return;
    }
    char accept[29];
    ws_accept(key, kl, accept);
    char resp[160];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    queue(c, resp, (size_t)n);
    c->role = (unsigned char)role;
    if (role == R_SUB) {
        size_t cap = (size_t)cap_subs;
        subs = grow(subs, &cap, (size_t)n_subs + 1, sizeof *subs);
        cap_subs = (int)cap;
        c->sub_index = n_subs;
        subs[n_subs++] = c;
        queue_frame(c, 1, (const unsigned char *)"ok", 2);
    }
}

/* Handles one complete client frame (payload unmasked in place). */
static void on_frame(conn_t *c, int opcode, unsigned char *payload, size_t n)
{
    switch (opcode) {
    case 0x8: {   /* close: the same code back, then the socket closes */
        queue_frame(c, 0x8, payload, n >= 2 ? 2 : 0);
        c->closing = 1;
        unsubscribe(c);
        return;
    }
    case 0x9:
        queue_frame(c, 0xA, payload, n);
        return;
    case 0xA:
        return;
    default:
        break;
    }
    if (c->role == R_ECHO) {
        queue_frame(c, opcode, payload, n);
    } else if (c->role == R_PUB) {
        unsigned char h[10];
        size_t hl = frame_header(h, opcode, n);
        for (int i = 0; i < n_subs; i++)   /* the header built once for all */
            queue_built(subs[i], h, hl, payload, n);
    }
}

/* Consumes what it can of data[0..n); returns the bytes used, or -1 to drop the connection. */
static long consume(conn_t *c, unsigned char *data, size_t n)
{
    size_t used = 0;
    if (c->role == R_NONE) {
        if (c->closing)
            return (long)n;
        unsigned char *end = memmem(data, n, "\r\n\r\n", 4);
        if (!end)
            return n > MAX_HEADER ? -1 : 0;
        end[2] = 0;   /* the head ends at its last line's CRLF */
        upgrade(c, (char *)data);
        used = (size_t)(end - data) + 4;
    }
    while (!c->closing && c->role != R_NONE) {
        unsigned char *p = data + used;
        size_t left = n - used;
        if (left < 2)
            break;
        if (!(p[1] & 0x80))
            return -1;   /* client frames must be masked */
        int opcode = p[0] & 0x0F;
        uint64_t len = p[1] & 0x7F;
        size_t h = 2;
        if (len == 126) {
            if (left < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            h = 4;
        } else if (len == 127) {
            if (left < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            h = 10;
        }
        if (len > MAX_FRAME)
            return -1;
        if (left < h + 4 + len)
            break;
        unsigned char *mask = p + h, *pl = p + h + 4;
        for (uint64_t i = 0; i < len; i++)
            pl[i] ^= mask[i & 3];
        on_frame(c, opcode, pl, (size_t)len);
        used += h + 4 + (size_t)len;
    }
    if (c->closing)
        return (long)n;   /* nothing after a close frame is read */
    return (long)used;
}

static void on_readable(conn_t *c)
{
    for (;;) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            conn_free(c);
            return;
        }
        unsigned char *data = rbuf;
        size_t n = (size_t)r;
        if (c->in_len) {   /* an incomplete request or frame: append and parse together */
            c->in = grow(c->in, &c->in_cap, c->in_len + n + 1, 1);
            memcpy(c->in + c->in_len, rbuf, n);
            c->in_len += n;
            data = c->in;
            n = c->in_len;
        }
        long used = consume(c, data, n);
        if (used < 0) {
            conn_free(c);
            return;
        }
        size_t rest = n - (size_t)used;
        if (rest) {
            if (data == c->in) {
                memmove(c->in, c->in + used, rest);
            } else {
                c->in = grow(c->in, &c->in_cap, rest + 1, 1);
                memcpy(c->in, data + used, rest);
            }
        } else if (c->in) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
        c->in_len = rest;
        if ((size_t)r < sizeof rbuf)
            return;   /* the socket is drained for now */
    }
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;   /* EAGAIN, or out of descriptors: the next event tries again */
        }
        if (fd >= max_fds) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->fd = fd;
        c->sub_index = -1;
        conns[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl");
    }
}

static void ping_all(void)
{
    for (int fd = 0; fd < max_fds; fd++) {
        conn_t *c = conns[fd];
        if (c && c->role != R_NONE && !c->closing)
            queue_frame(c, 0x9, (const unsigned char *)"", 0);
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    double ping_interval = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host"))
            host = argv[i + 1];
        else if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ping-interval"))
            ping_interval = atof(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: nullserver --host H --port N [--ping-interval SEC]\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    max_fds = (int)(rl.rlim_cur > 1048576 ? 1048576 : rl.rlim_cur);
    conns = calloc((size_t)max_fds, sizeof *conns);
    if (!conns)
        die("calloc");

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad --host %s (an IPv4 address)\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(lfd, 4096) < 0)
        die("listen");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    int tfd = -1;
    if (ping_interval > 0) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (tfd < 0)
            die("timerfd_create");
        struct itimerspec its;
        its.it_interval.tv_sec = (time_t)ping_interval;
        its.it_interval.tv_nsec = (long)((ping_interval - (double)(time_t)ping_interval) * 1e9);
        its.it_value = its.it_interval;
        timerfd_settime(tfd, 0, &its, NULL);
        struct epoll_event tev = {.events = EPOLLIN, .data.fd = tfd};
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    }
    fprintf(stderr, "nullserver listening on %s:%d\n", host, port);

    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                on_accept(lfd);
                continue;
            }
            if (fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) > 0)
                    ping_all();
                continue;
            }
            conn_t *c = conns[fd];   /* NULL if closed earlier in this batch */
            if (c && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(c);
            c = conns[fd];
            if (c && (evs[i].events & EPOLLOUT))
                flush(c);
        }
        /* one write per connection for everything this iteration queued */
        while (n_dirty) {
            conn_t *c = dirty[--n_dirty];
            c->dirty = 0;
            flush(c);
        }
    }
}
