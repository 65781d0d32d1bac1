/*
 * WebSocket load generator for bench/run.py.
 *
 * Single-threaded, non-blocking sockets driven by one epoll loop, so that a
 * single core of the generator can saturate a single-core Python server.
 * Speaks just enough RFC 6455 as a client: HTTP upgrade (the
 * Sec-WebSocket-Accept value is verified), masked client frames, server frame
 * parsing with 7/16/64-bit lengths. Pings on open connections are counted
 * and answered with a masked pong carrying the same payload.
 *
 * Modes (one JSON object is printed on stdout at the end):
 *   echo      --conns N --size S --duration SEC [--warmup SEC]
 *   handshake --concurrency C --duration SEC
 *   idle      --conns N --hold SEC
 *   fanout    --subs N --messages M --size S [--timeout SEC] [--sync]
 *             [--payload x|text|json] [--verify K] [--deflate] [--rounds R]
 * Common: --host H --port P --path /echo [--inflight K] [--hs-timeout SEC]
 *
 * --deflate: every upgrade offers permessage-deflate
 * ("permessage-deflate; client_max_window_bits"), frames with RSV1 set are
 * accepted on connections whose 101 response agreed to the extension, and a
 * connection is counted as negotiated when that response carries a
 * permessage-deflate extension. The client's own frames are always sent
 * uncompressed (allowed by RFC 7692). Compressed messages are counted; their
 * content is inflated and checked only on the --verify connections and only
 * when built with -DHAVE_ZLIB -lz.
 * --payload text: the publisher sends M distinct, compressible JSON-like
 * lines of exactly S bytes (deterministic: the same bytes for every server);
 * the default fills every message with 'x'.
 * --payload json (echo and fanout): every message is the JSON object
 * {"k":"xxx...x"} of exactly S bytes (S >= 8), which a server that parses and
 * re-serialises it compactly sends back byte for byte.
 * --verify K: the first K subscribers keep every message and compare it with
 * what was published (after inflating it when compressed).
 * --rounds R (fanout): the publisher sends its M messages R times to the same
 * subscribers, each round a measured window of its own (MARK start/end), the
 * next starting once every subscriber has the previous one's M; "rounds" in
 * the JSON has each window's figures, the top-level ones are for all rounds.
 *
 * handshake: each cycle is connect, upgrade, masked close (1000), then the
 * socket is closed as soon as the server's close frame arrives, so the server
 * process is left with nothing per cycle (TIME_WAIT, if any, is kernel state).
 * fanout: frames are counted per subscriber by a streaming parser, so any
 * number of frames (or fragments of one) per read is handled.
 * All modes end by sending a close frame on every open connection and waiting
 * (bounded) for the reply, so servers see normal closures.
 *
 * Progress lines on stderr, used by run.py to sample the server's CPU time
 * exactly around the measured window:
 *   "MARK start" / "MARK end"  measured window boundaries (echo, handshake,
 *                              fanout); with --sync, fanout waits for one line
 *                              on stdin after each MARK before continuing.
 *   "READY <n>"                idle: all connections attempted, <n> are open.
 *   "TICK <k> <pings>"         idle: k seconds after READY (k = 0, 1, ...),
 *                              pings received so far on all connections.
 *
 * Build: gcc -O2 -o bench/.build/loadgen bench/loadgen.c
 *        (or add -DHAVE_ZLIB ... -lz to inflate and verify compressed messages)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef HAVE_ZLIB
#include <zlib.h>
#endif

#include "wsaccept.h"

enum { M_ECHO, M_HANDSHAKE, M_IDLE, M_FANOUT };
enum { S_FREE, S_CONNECTING, S_UPGRADING, S_OPEN, S_CLOSING };
enum { R_ECHO, R_HS, R_IDLE, R_SUB, R_PUB };

#define HBUF_SIZE 8192          /* max HTTP response header size accepted */
#define RBUF_SIZE (256 * 1024)  /* shared read buffer */
#define HIST_US 1000000         /* 1 us latency buckets up to 1 s */

typedef struct conn {
    int fd;
    int state;
    int role;
    int want_out;               /* EPOLLOUT currently registered */
    uint64_t t_start;           /* ns: attempt start, or last send (echo) */
    /* pending output that the kernel did not accept yet */
    unsigned char *wbuf;
    size_t woff, wlen, wcap;
    /* HTTP response accumulation (only while upgrading) */
    char *hbuf;
    size_t hlen;
    char accept[32];
    /* streaming frame parser state */
    unsigned char fh[14];
    int fh_len, fh_need, in_payload;
    int opcode, fin;
    uint64_t pay_left, pay_len, msg_len;
    unsigned char pfx[8];       /* first payload bytes of the current frame */
    int pfx_len;
    unsigned char ctl[125];     /* payload of the current control frame */
    int ctl_len;
    int deflate;                /* the 101 response agreed to permessage-deflate */
    int msg_rsv1;               /* the current message is compressed */
    /* whole-message copy, only on --verify subscribers */
    unsigned char *vbuf;
    size_t vlen, vcap;
    int voverflow;
#ifdef HAVE_ZLIB
    z_stream *zs;               /* inflater kept across messages (context takeover) */
#endif
    /* per-role counters */
    uint64_t msgs;
    int got_ok, done;
} conn_t;

static struct {
    int mode;
    const char *host, *path, *sub_path, *pub_path;
    int port, conns, size, concurrency, subs, messages, inflight, sync;
    int deflate, text, json, verify, rounds;
    double duration, warmup, hold, timeout, hs_timeout;
} opt = {
    .host = "127.0.0.1", .path = "/echo", .sub_path = "/sub", .pub_path = "/pub",
    .port = 0, .conns = 1, .size = 32, .concurrency = 16, .subs = 100,
    .messages = 10, .inflight = 256, .duration = 5, .warmup = 1, .hold = 10,
    .timeout = 60, .hs_timeout = 10, .rounds = 1,
};

static struct {
    uint64_t handshakes_ok, handshake_fail, connect_fail, unexpected_close;
    uint64_t protocol_errors, size_mismatch, content_mismatch, dropped;
    uint64_t cycles, close_without_frame;
    uint64_t msgs, deliveries, extra, subs_ok, subs_done;
    uint64_t pings, pongs_sent, compressed_msgs, verified, rx_sub_bytes;
} st;

static int ep;
static conn_t *conns;
static int nconns;
static struct sockaddr_in addr;
static unsigned char rbuf[RBUF_SIZE];
static uint32_t *hist;
static uint64_t hist_n, hist_over, hist_sum_ns, hist_max_ns;
static volatile sig_atomic_t stop_flag;
static uint64_t rng_state;
static int upgrading;           /* connections in S_CONNECTING/S_UPGRADING */

/* echo window */
static uint64_t t_warm_end, t_end;
static unsigned char *payload_tpl;
static unsigned char **payloads;    /* fanout: the M published messages */
static char deflate_resp[200];      /* first permessage-deflate response value */

/* ------------------------------------------------------------------ utils */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static uint64_t rnd64(void)
{
    /* xorshift64*: masks only need to be unpredictable-looking, not secure */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static void die(const char *msg)
{
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void mark(const char *what)
{
    fprintf(stderr, "MARK %s\n", what);
    fflush(stderr);
}

/* With --sync the orchestrator answers each MARK with one line on stdin. */
static void sync_wait(void)
{
    if (!opt.sync)
        return;
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (poll(&p, 1, 30000) > 0) {
        char b[64];
        ssize_t r = read(0, b, sizeof b);
        (void)r;
    }
}

static void hist_add(uint64_t ns)
{
    uint64_t us = ns / 1000;
    if (us < HIST_US)
        hist[us]++;
    else
        hist_over++;
    hist_n++;
    hist_sum_ns += ns;
    if (ns > hist_max_ns)
        hist_max_ns = ns;
}

static double hist_pct(double p)
{
    if (!hist_n)
        return 0;
    uint64_t want = (uint64_t)(p * (double)hist_n);
    if (want >= hist_n)
        want = hist_n - 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < HIST_US; i++) {
        acc += hist[i];
        if (acc > want)
            return (double)i;
    }
    return (double)HIST_US;
}

/* ------------------------------------------------------------- framing */

/* Builds one masked client frame into out; returns its length. */
static size_t build_frame(unsigned char *out, int opcode, const unsigned char *pl, size_t n)
{
    size_t h = 0;
    out[h++] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        out[h++] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    uint32_t m = (uint32_t)rnd64();
    unsigned char mk[4];
    memcpy(mk, &m, 4);
    memcpy(out + h, mk, 4);
    h += 4;
    unsigned char *dst = out + h;
    memcpy(dst, pl, n);
    uint64_t m64;
    memcpy(&m64, mk, 4);
    memcpy((unsigned char *)&m64 + 4, mk, 4);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, dst + i, 8);
        v ^= m64;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++)
        dst[i] ^= mk[i & 3];
    return h + n;
}

/* ----------------------------------------------------------- connection */

static void set_events(conn_t *c, int want_out)
{
    struct epoll_event ev = {0};
    ev.data.ptr = c;
    ev.events = (c->state == S_CONNECTING ? 0 : EPOLLIN) | (want_out ? EPOLLOUT : 0);
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl MOD");
    c->want_out = want_out;
}

static void conn_close(conn_t *c)
{
    if (c->state == S_FREE)
        return;
    if (c->state == S_CONNECTING || c->state == S_UPGRADING)
        upgrading--;
    close(c->fd);   /* also removes it from the epoll set */
    c->fd = -1;
    c->state = S_FREE;
    free(c->hbuf);
    c->hbuf = NULL;
    c->woff = c->wlen = 0;
}

static void conn_fail(conn_t *c);

/* Sends now if possible, queues the rest and waits for EPOLLOUT otherwise. */
static void conn_send(conn_t *c, const unsigned char *data, size_t n)
{
    if (c->wlen == c->woff) {
        c->woff = c->wlen = 0;
        while (n > 0) {
            ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
            if (w > 0) {
                data += w;
                n -= (size_t)w;
            } else if (w < 0 && errno == EINTR) {
                continue;
            } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else {
                conn_fail(c);
                return;
            }
        }
        if (n == 0)
            return;
    }
    if (c->wlen + n > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 4096;
        while (cap < c->wlen + n)
            cap *= 2;
        c->wbuf = realloc(c->wbuf, cap);
        if (!c->wbuf)
            die("out of memory");
        c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, data, n);
    c->wlen += n;
    if (!c->want_out)
        set_events(c, 1);
}

static void conn_flush(conn_t *c)
{
    while (c->woff < c->wlen) {
        ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (w > 0)
            c->woff += (size_t)w;
        else if (w < 0 && errno == EINTR)
            continue;
        else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        else {
            conn_fail(c);
            return;
        }
    }
    c->woff = c->wlen = 0;
    set_events(c, 0);
}

static int conn_open(conn_t *c, int role)
{
    memset(&c->fh, 0, sizeof c->fh);
    c->fh_len = 0; c->fh_need = 2; c->in_payload = 0;
    c->msg_len = 0; c->msgs = 0; c->got_ok = 0; c->done = 0;
    c->ctl_len = 0; c->deflate = 0; c->msg_rsv1 = 0; c->vlen = 0; c->voverflow = 0;
    c->woff = c->wlen = 0;
    c->role = role;
    c->t_start = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        st.connect_fail++;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = S_CONNECTING;
    upgrading++;
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r < 0 && errno != EINPROGRESS) {
        st.connect_fail++;
        conn_close(c);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl ADD");
    c->want_out = 1;
    return 0;
}

static void send_upgrade(conn_t *c)
{
    const char *path = c->role == R_SUB ? opt.sub_path : c->role == R_PUB ? opt.pub_path : opt.path;
    unsigned char key_raw[16];
    uint64_t a = rnd64(), b = rnd64();
    memcpy(key_raw, &a, 8);
    memcpy(key_raw + 8, &b, 8);
    char key[32];
    b64(key_raw, 16, key);
    ws_accept(key, strlen(key), c->accept);
    char req[640];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "%s"
                     "\r\n",
                     path, opt.host, opt.port, key,
                     opt.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                   "client_max_window_bits\r\n" : "");
    c->hbuf = malloc(HBUF_SIZE);
    if (!c->hbuf)
        die("out of memory");
    c->hlen = 0;
    c->state = S_UPGRADING;
    set_events(c, 0);
    conn_send(c, (unsigned char *)req, (size_t)n);
}

static void send_close(conn_t *c)
{
    unsigned char pl[2] = {0x03, 0xE8};   /* 1000, normal closure */
    unsigned char fr[16];
    size_t n = build_frame(fr, 0x8, pl, 2);
    c->state = S_CLOSING;
    c->t_start = now_ns();
    conn_send(c, fr, n);
}

static unsigned char *echo_frame;

static void echo_send(conn_t *c)
{
    size_t n = build_frame(echo_frame, 0x1, payload_tpl, (size_t)opt.size);
    c->t_start = now_ns();
    conn_send(c, echo_frame, n);
}

/* Called when the 101 response has been fully validated. */
static void on_open(conn_t *c)
{
    upgrading--;
    c->state = S_OPEN;
    st.handshakes_ok++;
    if (c->role == R_HS) {
        hist_add(now_ns() - c->t_start);
        send_close(c);
    }
}

/* ------------------------------------------------------ permessage-deflate */

#ifdef HAVE_ZLIB
static unsigned char *zout;
static size_t zout_cap;

/* Inflates one compressed message (RFC 7692 7.2.2: the 00 00 ff ff tail is
   appended). With *zsp the inflater persists across messages (the server may
   keep its context); without, a one-shot inflater is used. Returns the
   inflated length (the bytes are in zout) or -1. */
static long inflate_msg(z_stream **zsp, const unsigned char *in, size_t n)
{
    static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
    z_stream tmp, *zs = &tmp;
    if (zsp) {
        if (!*zsp) {
            *zsp = calloc(1, sizeof **zsp);
            if (!*zsp || inflateInit2(*zsp, -15) != Z_OK)
                die("inflateInit2");
        }
        zs = *zsp;
    } else {
        memset(&tmp, 0, sizeof tmp);
        if (inflateInit2(&tmp, -15) != Z_OK)
            die("inflateInit2");
    }
    size_t out = 0;
    long ret = 0;
    for (int part = 0; part < 2 && ret == 0; part++) {
        zs->next_in = (Bytef *)(part ? tail : in);
        zs->avail_in = (uInt)(part ? sizeof tail : n);
        for (int guard = 0; zs->avail_in > 0 && guard < 64; guard++) {
            if (out == zout_cap) {
                size_t cap = zout_cap ? zout_cap * 2 : 65536;
                if (cap > (64u << 20)) {
                    ret = -1;
                    break;
                }
                zout = realloc(zout, cap);
                if (!zout)
                    die("out of memory");
                zout_cap = cap;
            }
            zs->next_out = zout + out;
            zs->avail_out = (uInt)(zout_cap - out);
            int r = inflate(zs, Z_SYNC_FLUSH);
            out = zout_cap - zs->avail_out;
            if (r == Z_STREAM_END) {   /* a final block: the next message starts afresh */
                inflateReset(zs);
                break;
            }
            if (r != Z_OK && !(r == Z_BUF_ERROR && zs->avail_out == 0)) {
                ret = -1;
                break;
            }
        }
    }
    if (!zsp)
        inflateEnd(&tmp);
    return ret < 0 ? -1 : (long)out;
}
#endif

/* ---------------------------------------------------------------- frames */

/* Fanout subscriber: the first message must be "ok" (possibly compressed). */
static int is_ok_message(conn_t *c, uint64_t len)
{
    if (!c->msg_rsv1)
        return len == 2 && c->pfx_len >= 2 && c->pfx[0] == 'o' && c->pfx[1] == 'k';
#ifdef HAVE_ZLIB
    long n;
    if (c->vbuf)
        n = c->voverflow ? -1 : inflate_msg(&c->zs, c->vbuf, c->vlen);
    else
        n = len <= sizeof c->pfx ? inflate_msg(NULL, c->pfx, (size_t)len) : -1;
    return n == 2 && zout[0] == 'o' && zout[1] == 'k';
#else
    return 1;   /* cannot look inside without zlib */
#endif
}

/* --verify subscriber: the whole message against what was published. */
static void verify_message(conn_t *c, uint64_t idx)
{
    const unsigned char *body = c->vbuf;
    long n = c->voverflow ? -1 : (long)c->vlen;
    if (c->msg_rsv1) {
#ifdef HAVE_ZLIB
        n = c->voverflow ? -1 : inflate_msg(&c->zs, c->vbuf, c->vlen);
        body = zout;
#else
        return;
#endif
    }
    idx %= (uint64_t)opt.messages;   /* every round publishes the same M */
    if (n == (long)opt.size &&
        memcmp(body, payloads[idx], (size_t)opt.size) == 0)
        st.verified++;
    else
        st.content_mismatch++;
}

static void on_message(conn_t *c, uint64_t len, uint64_t t)
{
    switch (c->role) {
    case R_ECHO:
        if (len != (uint64_t)opt.size)
            st.size_mismatch++;
        else if (c->pfx_len && c->pfx[0] != payload_tpl[0])
            st.content_mismatch++;
        if (t >= t_warm_end && t < t_end) {
            st.msgs++;
            hist_add(t - c->t_start);
        }
        if (t < t_end && !stop_flag)
            echo_send(c);
        else
            c->done = 1;
        break;
    case R_SUB:
        if (!c->got_ok) {
            if (is_ok_message(c, len)) {
                c->got_ok = 1;
                st.subs_ok++;
            } else {
                st.content_mismatch++;
            }
            break;
        }
        if (c->msg_rsv1)
            st.compressed_msgs++;
        else if (len != (uint64_t)opt.size)
            st.size_mismatch++;
        if (c->vbuf)
            verify_message(c, c->msgs);
        c->msgs++;
        if (c->msgs <= (uint64_t)opt.messages * (uint64_t)opt.rounds) {
            st.deliveries++;
            if (c->msgs == (uint64_t)opt.messages * (uint64_t)opt.rounds)
                st.subs_done++;
        } else {
            st.extra++;
        }
        break;
    default:
        break;
    }
}

/* Returns 0 to keep going, -1 if the connection was closed. */
static int on_frame(conn_t *c, uint64_t t)
{
    int op = c->opcode;
    if (op == 0x8) {
        if (c->state == S_CLOSING && c->role != R_HS) {
            /* our own teardown: nothing to count */
        } else if (c->role == R_HS && c->state == S_CLOSING) {
            st.cycles++;
            c->done = 1;
        } else if (c->role == R_IDLE) {
            st.dropped++;
        } else {
            st.unexpected_close++;
        }
        conn_close(c);
        return -1;
    }
    if (op == 0x9) {
        if (c->state == S_OPEN) {
            unsigned char fr[140];
            st.pings++;
            conn_send(c, fr, build_frame(fr, 0xA, c->ctl, (size_t)c->ctl_len));
            if (c->state == S_FREE)
                return -1;
            st.pongs_sent++;
        }
        return 0;
    }
    if (op == 0xA)
        return 0;
    if (op == 0x1 || op == 0x2)
        c->msg_len = c->pay_len;
    else if (op == 0x0)
        c->msg_len += c->pay_len;
    else {
        st.protocol_errors++;
        conn_close(c);
        return -1;
    }
    if (c->fin)
        on_message(c, c->msg_len, t);
    return c->state == S_FREE ? -1 : 0;
}

/* Checks a complete frame header; returns 0 if acceptable. */
static int check_header(conn_t *c, int rsv, uint64_t len)
{
    int op = c->opcode;
    if (op >= 0x8)
        return (rsv || !c->fin || len > 125) ? -1 : 0;
    if (rsv & 0x30)
        return -1;
    if (rsv & 0x40) {
        /* RSV1 marks a compressed message: first frame only, if negotiated */
        if (!c->deflate || op == 0x0)
            return -1;
    }
    if (op == 0x1 || op == 0x2) {
        c->msg_rsv1 = (rsv & 0x40) != 0;
        c->vlen = 0;
        c->voverflow = 0;
    }
    return 0;
}

/* Streaming parser: any number of frames (or parts) per call. */
static void feed(conn_t *c, const unsigned char *p, size_t n)
{
    uint64_t t = now_ns();
    while (n > 0) {
        if (!c->in_payload) {
            size_t take = (size_t)(c->fh_need - c->fh_len);
            if (take > n)
                take = n;
            memcpy(c->fh + c->fh_len, p, take);
            c->fh_len += (int)take;
            p += take;
            n -= take;
            if (c->fh_len < c->fh_need)
                return;
            if (c->fh_need == 2) {
                int l7 = c->fh[1] & 0x7f;
                if (c->fh[1] & 0x80) {     /* servers must not mask */
                    st.protocol_errors++;
                    conn_close(c);
                    return;
                }
                c->fh_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
                if (c->fh_need > 2)
                    continue;
            }
            int l7 = c->fh[1] & 0x7f;
            uint64_t len = (uint64_t)l7;
            if (l7 == 126)
                len = (uint64_t)c->fh[2] << 8 | c->fh[3];
            else if (l7 == 127) {
                len = 0;
                for (int i = 0; i < 8; i++)
                    len = len << 8 | c->fh[2 + i];
            }
            c->fin = c->fh[0] >> 7;
            c->opcode = c->fh[0] & 0x0f;
            if (check_header(c, c->fh[0] & 0x70, len) < 0) {
                st.protocol_errors++;
                conn_close(c);
                return;
            }
            c->pay_len = c->pay_left = len;
            c->pfx_len = 0;
            c->ctl_len = 0;
            c->fh_len = 0;
            c->fh_need = 2;
            c->in_payload = 1;
        } else {
            size_t take = c->pay_left < n ? (size_t)c->pay_left : n;
            if (c->opcode >= 0x8) {
                memcpy(c->ctl + c->ctl_len, p, take);   /* len <= 125 was checked */
                c->ctl_len += (int)take;
            } else {
                for (size_t k = 0; k < take && c->pfx_len < (int)sizeof c->pfx; k++)
                    c->pfx[c->pfx_len++] = p[k];
                if (c->vbuf) {
                    if (c->vlen + take <= c->vcap) {
                        memcpy(c->vbuf + c->vlen, p, take);
                        c->vlen += take;
                    } else {
                        c->voverflow = 1;
                    }
                }
            }
            c->pay_left -= take;
            p += take;
            n -= take;
        }
        if (c->in_payload && c->pay_left == 0) {
            c->in_payload = 0;
            if (on_frame(c, t) < 0)
                return;
        }
    }
}

static int ci_prefix(const char *s, const char *pfx)
{
    for (; *pfx; s++, pfx++)
        if ((*s | 0x20) != (*pfx | 0x20))
            return 0;
    return 1;
}

/* Validates the 101 response; returns bytes consumed, 0 if incomplete, -1 on error. */
static long parse_upgrade(conn_t *c)
{
    char *end = memmem(c->hbuf, c->hlen, "\r\n\r\n", 4);
    if (!end)
        return c->hlen >= HBUF_SIZE ? -1 : 0;
    *end = 0;
    if (strncmp(c->hbuf, "HTTP/1.1 101", 12) != 0)
        return -1;
    int accept_ok = 0;
    for (char *line = strstr(c->hbuf, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (ci_prefix(line, "sec-websocket-extensions:")) {
            char *v = line + 25;
            while (*v == ' ' || *v == '\t')
                v++;
            char *eol = strstr(v, "\r\n");
            size_t vl = eol ? (size_t)(eol - v) : strlen(v);
            int pmd = 0;
            for (size_t i = 0; i + 18 <= vl && !pmd; i++)
                pmd = ci_prefix(v + i, "permessage-deflate");
            if (pmd && !opt.deflate)
                return -1;   /* an extension the client never offered */
            if (pmd) {
                c->deflate = 1;
                if (!deflate_resp[0]) {
                    size_t k = 0;   /* kept for the report: JSON-safe characters only */
                    for (size_t i = 0; i < vl && k + 1 < sizeof deflate_resp; i++)
                        if (v[i] >= ' ' && v[i] != '"' && v[i] != '\\')
                            deflate_resp[k++] = v[i];
                    deflate_resp[k] = 0;
                }
            }
        }
        if (ci_prefix(line, "sec-websocket-accept:")) {
            char *v = line + 21;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t al = strlen(c->accept);
            accept_ok = strncmp(v, c->accept, al) == 0 &&
                        (v[al] == '\r' || v[al] == 0 || v[al] == ' ');
        }
    }
    return accept_ok ? (long)(end - c->hbuf) + 4 : -1;
}

static void conn_fail(conn_t *c)
{
    if (c->state == S_CONNECTING)
        st.connect_fail++;
    else if (c->state == S_UPGRADING)
        st.handshake_fail++;
    else if (c->state == S_CLOSING && c->role == R_HS) {
        /* peer closed TCP without sending its close frame */
        st.cycles++;
        st.close_without_frame++;
        c->done = 1;
    } else if (c->state == S_OPEN) {
        if (c->role == R_IDLE)
            st.dropped++;
        else
            st.unexpected_close++;
    }
    conn_close(c);
}

static void on_readable(conn_t *c)
{
    ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (r <= 0) {
        conn_fail(c);
        return;
    }
    if (c->state == S_UPGRADING) {
        size_t room = HBUF_SIZE - c->hlen;
        size_t take = (size_t)r < room ? (size_t)r : room;
        memcpy(c->hbuf + c->hlen, rbuf, take);
        c->hlen += take;
        long used = parse_upgrade(c);
        if (used == 0)
            return;
        if (used < 0) {
            static int reported;
            if (!reported++) {   /* one sample is enough to diagnose a bad route */
                char *eol = memchr(c->hbuf, '\r', c->hlen);
                int ln = eol ? (int)(eol - c->hbuf) : (int)(c->hlen < 100 ? c->hlen : 100);
                fprintf(stderr, "upgrade rejected: %.*s\n", ln > 100 ? 100 : ln, c->hbuf);
                fflush(stderr);
            }
            conn_fail(c);
            return;
        }
        /* bytes after the header, e.g. "ok" sent right after the 101 */
        size_t extra = c->hlen - (size_t)used;
        unsigned char tmp[HBUF_SIZE];
        memcpy(tmp, c->hbuf + used, extra);
        free(c->hbuf);
        c->hbuf = NULL;
        on_open(c);
        if (c->state == S_FREE)
            return;
        if (extra)
            feed(c, tmp, extra);
        if (c->state != S_FREE && take < (size_t)r)
            feed(c, rbuf + take, (size_t)r - take);
        return;
    }
    if (c->role == R_SUB)
        st.rx_sub_bytes += (uint64_t)r;
    feed(c, rbuf, (size_t)r);
}

static void on_event(conn_t *c, uint32_t ev)
{
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err || (ev & (EPOLLERR | EPOLLHUP))) {
            conn_fail(c);
            return;
        }
        send_upgrade(c);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        on_readable(c);
        if (c->state == S_FREE)
            return;
    }
    if ((ev & EPOLLOUT) && c->want_out)
        conn_flush(c);
}

/* One epoll round; expires slow handshakes once per call. */
static void poll_once(int timeout_ms)
{
    static struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait");
    for (int i = 0; i < n; i++)
        on_event(evs[i].data.ptr, evs[i].events);
    static uint64_t last_scan;
    uint64_t t = now_ns();
    if (t - last_scan > 100000000ull) {
        last_scan = t;
        uint64_t lim = (uint64_t)(opt.hs_timeout * 1e9);
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            if ((c->state == S_CONNECTING || c->state == S_UPGRADING || c->state == S_CLOSING) &&
                t - c->t_start > lim)
                conn_fail(c);
        }
    }
}

/* Opens connections [from, to) with at most opt.inflight upgrades at a time,
   until each is open or failed (or the deadline passes). */
static void open_batch(int from, int to, int role, uint64_t deadline)
{
    int next = from;
    while (!stop_flag && now_ns() < deadline) {
        while (next < to && upgrading < opt.inflight) {
            conn_open(&conns[next], role);
            next++;
        }
        if (next >= to && upgrading == 0)
            break;
        poll_once(10);
    }
}

/* Polite teardown so servers see a normal close instead of a reset/EOF
   (some log every abnormal closure); bounded, then forced. */
static void close_all(void)
{
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->state == S_OPEN)
            send_close(c);
        else if (c->state != S_CLOSING)
            conn_close(c);
    }
    uint64_t deadline = now_ns() + 5000000000ull;
    for (;;) {
        int left = 0;
        for (int i = 0; i < nconns; i++)
            left += conns[i].state != S_FREE;
        if (!left || now_ns() >= deadline)
            break;
        poll_once(10);
    }
    for (int i = 0; i < nconns; i++)
        conn_close(&conns[i]);
}

/* ----------------------------------------------------------------- modes */

static void json_common(double wall, double cpu)
{
    printf("\"loadgen_cpu_s\": %.4f, \"wall_s\": %.4f, "
           "\"handshakes_ok\": %" PRIu64 ", \"handshake_fail\": %" PRIu64 ", "
           "\"connect_fail\": %" PRIu64 ", \"unexpected_close\": %" PRIu64 ", "
           "\"protocol_errors\": %" PRIu64 ", \"size_mismatch\": %" PRIu64 ", "
           "\"content_mismatch\": %" PRIu64,
           cpu, wall, st.handshakes_ok, st.handshake_fail, st.connect_fail,
           st.unexpected_close, st.protocol_errors, st.size_mismatch, st.content_mismatch);
}

static uint64_t errors_total(void)
{
    return st.handshake_fail + st.connect_fail + st.unexpected_close +
           st.protocol_errors + st.size_mismatch + st.content_mismatch;
}

static void json_latency(void)
{
    printf("\"lat_p50_us\": %.1f, \"lat_p90_us\": %.1f, \"lat_p99_us\": %.1f, "
           "\"lat_p999_us\": %.1f, \"lat_max_us\": %.1f, \"lat_mean_us\": %.2f, "
           "\"lat_over_1s\": %" PRIu64 ", ",
           hist_pct(0.50), hist_pct(0.90), hist_pct(0.99), hist_pct(0.999),
           hist_max_ns / 1000.0, hist_n ? hist_sum_ns / 1000.0 / (double)hist_n : 0.0,
           hist_over);
}

static void run_echo(uint64_t t_begin)
{
    nconns = opt.conns;
    uint64_t hs_deadline = now_ns() + (uint64_t)(opt.timeout * 1e9);
    open_batch(0, nconns, R_ECHO, hs_deadline);
    int open = 0;
    for (int i = 0; i < nconns; i++)
        open += conns[i].state == S_OPEN;

    uint64_t t0 = now_ns();
    t_warm_end = t0 + (uint64_t)(opt.warmup * 1e9);
    t_end = t_warm_end + (uint64_t)(opt.duration * 1e9);
    if (!open)   /* nothing to measure; report at once */
        t_warm_end = t_end = t0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == S_OPEN)
            echo_send(&conns[i]);

    double cpu0 = 0, cpu1 = 0;
    uint64_t w0 = 0, w1 = 0;
    int started = 0, ended = 0;
    uint64_t hard = t_end + 2000000000ull;   /* grace for the last echoes */
    for (;;) {
        uint64_t t = now_ns();
        if (!started && t >= t_warm_end) {
            started = 1; w0 = t; cpu0 = cpu_seconds();
            mark("start");
        }
        if (!ended && (t >= t_end || stop_flag)) {
            ended = 1; w1 = t; cpu1 = cpu_seconds();
            if (!started) { w0 = w1; cpu0 = cpu1; }
            mark("end");
        }
        if (ended) {
            int busy = 0;
            for (int i = 0; i < nconns; i++)
                busy += conns[i].state == S_OPEN && !conns[i].done;
            if (!busy || t >= hard)
                break;
        }
        poll_once(5);
    }
    close_all();

    /* messages are counted by completion time inside [t_warm_end, t_end) */
    (void)w0;
    uint64_t we = w1 < t_end ? w1 : t_end;
    double win = we > t_warm_end ? (we - t_warm_end) / 1e9 : 0.0;
    printf("{\"mode\": \"echo\", \"conns\": %d, \"conns_open\": %d, \"size\": %d, "
           "\"duration_s\": %.4f, \"messages\": %" PRIu64 ", \"msgs_per_s\": %.1f, ",
           opt.conns, open, opt.size, win, st.msgs, win > 0 ? st.msgs / win : 0.0);
    json_latency();
    printf("\"loadgen_cpu_window_s\": %.4f, \"errors\": %" PRIu64 ", ", cpu1 - cpu0, errors_total());
    json_common((now_ns() - t_begin) / 1e9, cpu_seconds());
    printf("}\n");
}

static void run_handshake(uint64_t t_begin)
{
    nconns = opt.concurrency;
    uint64_t t0 = now_ns();
    uint64_t end = t0 + (uint64_t)(opt.duration * 1e9);
    double cpu0 = cpu_seconds();
    mark("start");
    for (int i = 0; i < nconns; i++)
        conn_open(&conns[i], R_HS);
    uint64_t cycles_at_end = 0, w1 = 0;
    double cpu1 = 0;
    int ended = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (!ended && (t >= end || stop_flag)) {
            ended = 1; w1 = t; cpu1 = cpu_seconds();
            cycles_at_end = st.cycles;
            mark("end");
        }
        int active = 0;
        for (int i = 0; i < nconns; i++) {
            if (conns[i].state == S_FREE) {
                if (!ended)
                    conn_open(&conns[i], R_HS);
            }
            active += conns[i].state != S_FREE;
        }
        if (ended && (!active || t >= end + 2000000000ull))
            break;
        poll_once(5);
    }
    close_all();
    double win = (w1 - t0) / 1e9;
    printf("{\"mode\": \"handshake\", \"concurrency\": %d, \"duration_s\": %.4f, "
           "\"cycles\": %" PRIu64 ", \"handshakes_per_s\": %.1f, "
           "\"close_without_frame\": %" PRIu64 ", \"failures\": %" PRIu64 ", ",
           opt.concurrency, win, cycles_at_end, win > 0 ? cycles_at_end / win : 0.0,
           st.close_without_frame, errors_total());
    json_latency();
    printf("\"loadgen_cpu_window_s\": %.4f, ", cpu1 - cpu0);
    json_common((now_ns() - t_begin) / 1e9, cpu_seconds());
    printf("}\n");
}

static void run_idle(uint64_t t_begin)
{
    nconns = opt.conns;
    uint64_t t0 = now_ns();
    open_batch(0, nconns, R_IDLE, t0 + (uint64_t)(opt.timeout * 1e9));
    int ok = 0;
    for (int i = 0; i < nconns; i++)
        ok += conns[i].state == S_OPEN;
    double est = (now_ns() - t0) / 1e9;
    fprintf(stderr, "READY %d\n", ok);
    fflush(stderr);
    uint64_t t_ready = now_ns();
    uint64_t until = t_ready + (uint64_t)(opt.hold * 1e9);
    int tick = 0;
    fprintf(stderr, "TICK 0 %" PRIu64 "\n", st.pings);
    fflush(stderr);
    while (!stop_flag) {
        uint64_t t = now_ns();
        uint64_t next = t_ready + (uint64_t)(tick + 1) * 1000000000ull;
        if (t >= next && next <= until) {
            tick++;
            fprintf(stderr, "TICK %d %" PRIu64 "\n", tick, st.pings);
            fflush(stderr);
            continue;
        }
        if (t >= until)
            break;
        uint64_t wake = next < until ? next : until;
        int ms = (int)((wake - t) / 1000000ull);
        poll_once(ms < 1 ? 1 : ms > 50 ? 50 : ms);
    }
    int still = 0;
    for (int i = 0; i < nconns; i++)
        still += conns[i].state == S_OPEN;
    close_all();
    printf("{\"mode\": \"idle\", \"conns\": %d, \"ok\": %d, \"still_open\": %d, "
           "\"dropped\": %" PRIu64 ", \"establish_s\": %.4f, \"failures\": %" PRIu64 ", "
           "\"pings\": %" PRIu64 ", \"pongs_sent\": %" PRIu64 ", ",
           opt.conns, ok, still, st.dropped, est, errors_total(), st.pings, st.pongs_sent);
    json_common((now_ns() - t_begin) / 1e9, cpu_seconds());
    printf("}\n");
}

static void run_fanout(uint64_t t_begin)
{
    int n = opt.subs;
    nconns = n + 1;
    for (int i = 0; i < n && i < opt.verify; i++) {
        /* room for a compressed message larger than the original, plus slack */
        conns[i].vcap = 2 * (size_t)opt.size + 1024;
        conns[i].vbuf = malloc(conns[i].vcap);
        if (!conns[i].vbuf)
            die("out of memory");
    }
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(opt.timeout * 1e9);
    open_batch(0, n, R_SUB, deadline);
    /* every subscriber must have its "ok" before publishing starts */
    while (!stop_flag && now_ns() < deadline) {
        int waiting = 0;
        for (int i = 0; i < n; i++)
            waiting += conns[i].state == S_OPEN && !conns[i].got_ok;
        if (!waiting)
            break;
        poll_once(10);
    }
    double subscribe_s = (now_ns() - t0) / 1e9;
    int subs_ok = (int)st.subs_ok;

    conn_t *pub = &conns[n];
    open_batch(n, n + 1, R_PUB, deadline);
    uint64_t per_round = (uint64_t)subs_ok * (uint64_t)opt.messages;
    uint64_t expected = per_round * (uint64_t)opt.rounds;
    double cpu_all = 0, el_all = 0;
    uint64_t rx = 0;
    char rounds_json[4096] = "";
    size_t rj = 0;
    int pub_ok = pub->state == S_OPEN;
    if (pub_ok) {
        size_t fmax = (size_t)opt.size + 14;
        unsigned char *buf = malloc(fmax * (size_t)opt.messages);
        if (!buf)
            die("out of memory");
        for (int r = 0; r < opt.rounds && !stop_flag; r++) {
            size_t len = 0;
            /* frames are masked before the window opens; all M go out back to back */
            for (int i = 0; i < opt.messages; i++)
                len += build_frame(buf + len, 0x1, payloads[i], (size_t)opt.size);
            mark("start");
            sync_wait();
            double cpu0 = cpu_seconds();
            uint64_t rx0 = st.rx_sub_bytes, d0 = st.deliveries;
            uint64_t w0 = now_ns();
            conn_send(pub, buf, len);
            uint64_t lim = w0 + (uint64_t)(opt.timeout * 1e9);
            while (!stop_flag && st.deliveries < d0 + per_round && now_ns() < lim)
                poll_once(10);
            uint64_t w1 = now_ns();
            uint64_t rx1 = st.rx_sub_bytes, d1 = st.deliveries;
            double cpu1 = cpu_seconds();
            mark("end");
            sync_wait();
            double el = (w1 - w0) / 1e9;
            cpu_all += cpu1 - cpu0;
            el_all += el;
            rx += rx1 - rx0;
            if (rj < sizeof rounds_json - 200)
                rj += (size_t)snprintf(rounds_json + rj, sizeof rounds_json - rj,
                                       "%s{\"elapsed_s\": %.6f, \"deliveries\": %" PRIu64 ", "
                                       "\"deliveries_per_s\": %.1f, \"loadgen_cpu_window_s\": "
                                       "%.4f, \"rx_bytes_window\": %" PRIu64 "}",
                                       r ? ", " : "", el, d1 - d0,
                                       el > 0 ? (d1 - d0) / el : 0.0, cpu1 - cpu0, rx1 - rx0);
            if (d1 < d0 + per_round)
                break;   /* a round that did not complete: the next would mix with it */
        }
        free(buf);
    }
    /* late frames would be "extra"; drain briefly to catch duplicates */
    uint64_t drain = now_ns() + 50000000ull;
    while (!stop_flag && now_ns() < drain)
        poll_once(5);
    int deflate_subs = 0;
    for (int i = 0; i < n; i++)
        deflate_subs += conns[i].got_ok && conns[i].deflate;
    int negotiated = opt.deflate && subs_ok > 0 && deflate_subs == subs_ok && pub->deflate;
    close_all();
    double el = el_all;
    printf("{\"mode\": \"fanout\", \"subs\": %d, \"subs_ok\": %d, \"messages\": %d, "
           "\"size\": %d, \"publisher_ok\": %s, \"subscribe_s\": %.4f, "
           "\"expected\": %" PRIu64 ", \"deliveries\": %" PRIu64 ", \"missing\": %" PRIu64 ", "
           "\"extra\": %" PRIu64 ", \"subs_complete\": %" PRIu64 ", \"elapsed_s\": %.6f, "
           "\"deliveries_per_s\": %.1f, \"loadgen_cpu_window_s\": %.4f, \"errors\": %" PRIu64 ", ",
           n, subs_ok, opt.messages, opt.size, pub_ok ? "true" : "false", subscribe_s,
           expected, st.deliveries, expected > st.deliveries ? expected - st.deliveries : 0,
           st.extra, st.subs_done, el, el > 0 ? st.deliveries / el : 0.0, cpu_all,
           errors_total());
    printf("\"rounds\": [%s], ", rounds_json);
    printf("\"payload\": \"%s\", \"deflate_offered\": %s, \"deflate_negotiated\": %s, "
           "\"deflate_subs\": %d, \"deflate_publisher\": %s, \"deflate_response\": \"%s\", "
           "\"compressed_msgs\": %" PRIu64 ", \"rx_bytes_window\": %" PRIu64 ", "
           "\"rx_bytes_per_delivery\": %.2f, \"zlib\": %s, \"verify_subs\": %d, "
           "\"verified\": %" PRIu64 ", ",
           opt.text ? "text" : opt.json ? "json" : "x", opt.deflate ? "true" : "false",
           negotiated ? "true" : "false", deflate_subs, pub->deflate ? "true" : "false",
           deflate_resp, st.compressed_msgs, rx,
           st.deliveries ? (double)rx / (double)st.deliveries : 0.0,
#ifdef HAVE_ZLIB
           "true",
#else
           "false",
#endif
           opt.verify < n ? opt.verify : n, st.verified);
    json_common((now_ns() - t_begin) / 1e9, cpu_seconds());
    printf("}\n");
}

/* Message idx of --payload text: JSON-like trade records, one per line, cut
   to exactly size bytes. Deterministic, ASCII only; repetitive enough to
   compress the way real feeds do, with numbers that differ per record. */
static void gen_text(unsigned char *buf, size_t size, uint32_t idx)
{
    static const char *sym[] = {"ACME", "GLOBEX", "INITECH", "UMBRELLA",
                                "STARK", "WAYNE", "WONKA", "TYRELL"};
    static const char *venue[] = {"XNAS", "XNYS", "BATS", "ARCX"};
    uint64_t s = 0x9E3779B97F4A7C15ull * ((uint64_t)idx + 1);
    size_t o = 0;
    char line[256];
    for (uint32_t k = 0; o < size; k++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(s >> 33);
        int n = snprintf(line, sizeof line,
                         "{\"seq\":%" PRIu32 ",\"type\":\"trade\",\"symbol\":\"%s\","
                         "\"price\":%" PRIu32 ".%02" PRIu32 ",\"qty\":%" PRIu32 ","
                         "\"side\":\"%s\",\"venue\":\"%s\",\"ts\":%" PRIu64 "}\n",
                         idx * 64 + k, sym[r % 8], 100 + r % 900, (r >> 10) % 100,
                         1 + (r >> 17) % 5000, (r >> 3) & 1 ? "buy" : "sell",
                         venue[(r >> 5) & 3],
                         (uint64_t)1700000000000ull + (uint64_t)idx * 1000 + k * 7);
        size_t take = (size_t)n < size - o ? (size_t)n : size - o;
        memcpy(buf + o, line, take);
        o += take;
    }
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen MODE [options]\n"
            "  echo      --conns N --size S --duration SEC [--warmup SEC]\n"
            "  handshake --concurrency C --duration SEC\n"
            "  idle      --conns N --hold SEC\n"
            "  fanout    --subs N --messages M --size S [--timeout SEC] [--sync]\n"
            "            [--payload x|text|json] [--verify K]\n"
            "common: --host H --port P --path /echo --inflight K --hs-timeout SEC --timeout SEC\n"
            "        --sub-path /sub --pub-path /pub --deflate\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "echo")) opt.mode = M_ECHO;
    else if (!strcmp(argv[1], "handshake")) opt.mode = M_HANDSHAKE;
    else if (!strcmp(argv[1], "idle")) opt.mode = M_IDLE;
    else if (!strcmp(argv[1], "fanout")) opt.mode = M_FANOUT;
    else usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--sync")) { opt.sync = 1; continue; }
        if (!strcmp(a, "--deflate")) { opt.deflate = 1; continue; }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--path")) opt.path = v;
        else if (!strcmp(a, "--sub-path")) opt.sub_path = v;
        else if (!strcmp(a, "--pub-path")) opt.pub_path = v;
        else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
        else if (!strcmp(a, "--size")) opt.size = atoi(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--warmup")) opt.warmup = atof(v);
        else if (!strcmp(a, "--concurrency")) opt.concurrency = atoi(v);
        else if (!strcmp(a, "--hold")) opt.hold = atof(v);
        else if (!strcmp(a, "--subs")) opt.subs = atoi(v);
        else if (!strcmp(a, "--messages")) opt.messages = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else if (!strcmp(a, "--hs-timeout")) opt.hs_timeout = atof(v);
        else if (!strcmp(a, "--inflight")) opt.inflight = atoi(v);
        else if (!strcmp(a, "--verify")) opt.verify = atoi(v);
        else if (!strcmp(a, "--rounds")) opt.rounds = atoi(v);
        else if (!strcmp(a, "--payload")) {
            if (!strcmp(v, "text")) opt.text = 1;
            else if (!strcmp(v, "json")) opt.json = 1;
            else if (!strcmp(v, "x")) opt.text = 0;
            else usage();
        }
        else usage();
    }
    if (opt.port <= 0 || opt.size < 0 || opt.conns <= 0 || opt.concurrency <= 0 ||
        opt.subs <= 0 || opt.messages <= 0 || opt.inflight <= 0 || opt.verify < 0 ||
        opt.rounds <= 0 ||
        (opt.json && (opt.text || opt.size < 8)))
        usage();

    /* 10k+ sockets need more than the usual soft limit of 1024 */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    rng_state = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
        die("--host must be an IPv4 address");

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    hist = calloc(HIST_US, sizeof *hist);
    payload_tpl = malloc((size_t)opt.size + 1);
    echo_frame = malloc((size_t)opt.size + 14);
    int maxc = opt.mode == M_HANDSHAKE ? opt.concurrency
             : opt.mode == M_FANOUT ? opt.subs + 1 : opt.conns;
    conns = calloc((size_t)maxc, sizeof *conns);
    if (!hist || !payload_tpl || !echo_frame || !conns)
        die("out of memory");
    memset(payload_tpl, 'x', (size_t)opt.size);
    if (opt.json) {   /* {"k":"xxx...x"}: valid JSON of exactly opt.size bytes */
        memcpy(payload_tpl, "{\"k\":\"", 6);
        payload_tpl[opt.size - 2] = '"';
        payload_tpl[opt.size - 1] = '}';
    }
    if (opt.mode == M_FANOUT) {
        payloads = calloc((size_t)opt.messages, sizeof *payloads);
        if (!payloads)
            die("out of memory");
        for (int i = 0; i < opt.messages; i++) {
            if (!opt.text) {
                payloads[i] = payload_tpl;
                continue;
            }
            payloads[i] = malloc((size_t)opt.size + 1);
            if (!payloads[i])
                die("out of memory");
            gen_text(payloads[i], (size_t)opt.size, (uint32_t)i);
        }
    }
    for (int i = 0; i < maxc; i++)
        conns[i].fd = -1;

    uint64_t t_begin = now_ns();
    switch (opt.mode) {
    case M_ECHO: run_echo(t_begin); break;
    case M_HANDSHAKE: run_handshake(t_begin); break;
    case M_IDLE: run_idle(t_begin); break;
    case M_FANOUT: run_fanout(t_begin); break;
    }
    fflush(stdout);
    return 0;
}
