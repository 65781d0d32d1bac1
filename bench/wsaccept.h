/*
 * SHA-1 and base64, enough for the WebSocket handshake's Sec-WebSocket-Accept
 * (RFC 6455 4.2.2): shared by bench/loadgen.c (to verify it) and
 * bench/nullserver.c (to compute it).
 */
#ifndef BENCH_WSACCEPT_H
#define BENCH_WSACCEPT_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct { uint32_t h[5]; unsigned char blk[64]; uint64_t len; } sha1_t;

#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static void sha1_block(sha1_t *s, const unsigned char *p)
{
    uint32_t w[80], a, b, c, d, e, t;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3]; e = s->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20)      { f = (b & c) | (~b & d);           k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d;                    k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d);  k = 0x8F1BBCDC; }
        else             { f = b ^ c ^ d;                    k = 0xCA62C1D6; }
        t = ROL(a, 5) + f + e + k + w[i];
        e = d; d = c; c = ROL(b, 30); b = a; a = t;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}

static void sha1(const unsigned char *data, size_t n, unsigned char out[20])
{
    sha1_t s = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, {0}, 0};
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        sha1_block(&s, data + i);
    unsigned char tail[128] = {0};
    size_t r = n - i;
    memcpy(tail, data + i, r);
    tail[r] = 0x80;
    size_t tl = (r + 9 <= 64) ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int j = 0; j < 8; j++)
        tail[tl - 1 - j] = (unsigned char)(bits >> (8 * j));
    sha1_block(&s, tail);
    if (tl == 128)
        sha1_block(&s, tail + 64);
    for (int j = 0; j < 5; j++) {
        out[4 * j] = (unsigned char)(s.h[j] >> 24);
        out[4 * j + 1] = (unsigned char)(s.h[j] >> 16);
        out[4 * j + 2] = (unsigned char)(s.h[j] >> 8);
        out[4 * j + 3] = (unsigned char)s.h[j];
    }
}

static void b64(const unsigned char *in, size_t n, char *out)
{
    static const char tb[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tb[(v >> 18) & 63];
        out[o++] = tb[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tb[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tb[v & 63] : '=';
    }
    out[o] = 0;
}

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key of n bytes (at most 64): out gets 28
 * characters and a NUL. */
static void ws_accept(const char *key, size_t n, char out[29])
{
    char cat[128];
    if (n > 64)
        n = 64;
    memcpy(cat, key, n);
    memcpy(cat + n, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    unsigned char dg[20];
    sha1((const unsigned char *)cat, n + 36, dg);
    b64(dg, 20, out);
}

#endif
