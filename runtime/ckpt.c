/*
 * ckpt.c - PyTorch zip checkpoints (.ckpt) as StFile tensors: a zip
 * reader, a restricted pickle machine and the tensor rebuild. See ckpt.h.
 *
 * Nothing here recurses and nothing is ever called on the file's behalf:
 * every value the pickle builds is a Val of this file, all of them freed
 * together at the end. Limits come from the input: a value costs at least
 * one opcode byte, so the number of values, the stack and the memo are
 * bounded by the pickle's size.
 */
#define _GNU_SOURCE
#include "ckpt.h"

#include "util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

/* data.pkl of a real SD v1 checkpoint is well under 1 MB */
#define CKPT_MAX_PICKLE ((uint64_t)256 << 20)

/* ------------------------------------------------------------------------
 * little-endian loads
 * ------------------------------------------------------------------------ */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

int ckpt_is_zip(const uint8_t *p, size_t n) {
    return n >= 4 && p[0] == 'P' && p[1] == 'K' && ((p[2] == 3 && p[3] == 4) || (p[2] == 5 && p[3] == 6));
}

int ckpt_is_legacy(const uint8_t *p, size_t n) {
    /* PROTO 2, LONG1 of 10 bytes: torch.serialization's MAGIC_NUMBER 0x1950a86a20f9469cfc6c */
    static const uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    return n >= sizeof magic && memcmp(p, magic, sizeof magic) == 0;
}

/* Element sizes and names by StDtype (safetensors.c has the same tables;
 * kept here so that the zip reader does not link back into it). */
static size_t dt_size(StDtype d) {
    switch (d) {
    case ST_F64: case ST_I64: return 8;
    case ST_F32: case ST_I32: return 4;
    case ST_F16: case ST_BF16: case ST_I16: return 2;
    default: return 1;
    }
}

static const char *dt_name(StDtype d) {
    static const char *const n[] = {[ST_F32] = "F32", [ST_F16] = "F16", [ST_BF16] = "BF16", [ST_F64] = "F64",
                                    [ST_I64] = "I64", [ST_I32] = "I32", [ST_I16] = "I16", [ST_I8] = "I8",
                                    [ST_U8] = "U8", [ST_BOOL] = "BOOL"};
    return n[d];
}

/* "[2, 3]" */
static const char *shape_str(int nd, const int64_t *s, char *buf, size_t size) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < nd && k < size; i++) k += (size_t)snprintf(buf + k, size - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* ------------------------------------------------------------------------
 * zip
 * ------------------------------------------------------------------------ */

typedef struct ZEntry {
    const char *name;       /* into the central directory, not NUL-terminated */
    size_t name_len;
    uint16_t flags, method;
    uint32_t crc;
    uint64_t csize, usize;  /* compressed and uncompressed sizes */
    uint64_t local_off;     /* local file header */
    const uint8_t *bytes;   /* the uncompressed member once loaded (mapping or aux), else NULL */
    int want;               /* a tensor of the result reads it */
    uint64_t aux_off;       /* deflated: where in f->aux it goes */
} ZEntry;

typedef struct Zip {
    const char *path;
    const uint8_t *map;
    size_t size;
    ZEntry *e;
    size_t n;
    size_t *sorted;         /* entry indices by name */
} Zip;

static int zname_cmp(const ZEntry *a, const char *name, size_t len) {
    size_t m = a->name_len < len ? a->name_len : len;
    int c = memcmp(a->name, name, m);
    if (c) return c;
    return (a->name_len > len) - (a->name_len < len);
}

/* qsort_r order of entry indices by name (ctx: the Zip) */
static int cmp_entry_idx(const void *x, const void *y, void *ctx) {
    const Zip *z = ctx;
    const ZEntry *a = &z->e[*(const size_t *)x], *b = &z->e[*(const size_t *)y];
    return zname_cmp(a, b->name, b->name_len);
}

/* Entry index of `name`, or -1. */
static long zip_find(const Zip *z, const char *name, size_t len) {
    size_t lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = zname_cmp(&z->e[z->sorted[mid]], name, len);
        if (c == 0) return (long)z->sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* Sizes and offset from a zip64 extended-information extra field, for the
 * central fields that are 0xFFFFFFFF. */
static int zip64_extra(const Zip *z, ZEntry *e, const uint8_t *x, size_t xl, int need_u, int need_c, int need_o) {
    size_t p = 0;
    while (p + 4 <= xl) {
        uint16_t id = rd16(x + p), len = rd16(x + p + 2);
        if (p + 4 + len > xl) break;
        if (id == 0x0001) {
            const uint8_t *d = x + p + 4;
            size_t k = 0;
            if (need_u) { if (k + 8 > len) goto bad; e->usize = rd64(d + k); k += 8; }
            if (need_c) { if (k + 8 > len) goto bad; e->csize = rd64(d + k); k += 8; }
            if (need_o) { if (k + 8 > len) goto bad; e->local_off = rd64(d + k); }
            return 0;
        }
        p += 4 + (size_t)len;
    }
bad:
    return ldm_fail("%s: zip: member '%.*s': expected a zip64 extra field with its sizes and offset (the central "
                    "directory says 0xFFFFFFFF), got none or a short one",
                    z->path, (int)e->name_len, e->name);
}

static int zip_open(Zip *z) {
    const uint8_t *m = z->map;
    size_t size = z->size;
    if (size < 22) return ldm_fail("%s: zip: truncated: %zu bytes, less than an end-of-central-directory record", z->path, size);
    /* the end of central directory record: the last one whose comment ends the file */
    size_t lo = size - 22 > 65535 ? size - 22 - 65535 : 0, eocd = SIZE_MAX;
    for (size_t p = size - 22 + 1; p-- > lo;) {
        if (rd32(m + p) == 0x06054b50 && p + 22 + rd16(m + p + 20) == size) {
            eocd = p;
            break;
        }
    }
    if (eocd == SIZE_MAX)
        return ldm_fail("%s: zip: expected an end-of-central-directory record at the end of the file, got none "
                        "(truncated or not a zip archive)", z->path);
    uint64_t n = rd16(m + eocd + 10), cd_size = rd32(m + eocd + 12), cd_off = rd32(m + eocd + 16);
    if (rd16(m + eocd + 4) != 0 || rd16(m + eocd + 6) != 0)
        return ldm_fail("%s: zip: expected a single-disk archive, got a multi-volume one", z->path);
    if (eocd >= 20 && rd32(m + eocd - 20) == 0x07064b50) {
        uint64_t r = rd64(m + eocd - 20 + 8);
        if (r > size || size - r < 56 || rd32(m + r) != 0x06064b50)
            return ldm_fail("%s: zip: expected the zip64 end-of-central-directory record at byte %llu (the locator "
                            "says so), got none", z->path, (unsigned long long)r);
        n = rd64(m + r + 32);
        cd_size = rd64(m + r + 40);
        cd_off = rd64(m + r + 48);
    } else if (n == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        return ldm_fail("%s: zip: expected a zip64 end-of-central-directory locator (the record's counts are "
                        "saturated), got none", z->path);
    }
    if (cd_off > size || cd_size > size - cd_off)
        return ldm_fail("%s: zip: expected the central directory [%llu, +%llu) inside the file's %zu bytes "
                        "(truncated?)", z->path, (unsigned long long)cd_off, (unsigned long long)cd_size, size);
    if (n > cd_size / 46)
        return ldm_fail("%s: zip: expected at most %llu members in a %llu-byte central directory, got %llu",
                        z->path, (unsigned long long)(cd_size / 46), (unsigned long long)cd_size, (unsigned long long)n);
    z->e = ldm_xcalloc((size_t)n + 1, sizeof *z->e);
    z->sorted = ldm_xcalloc((size_t)n + 1, sizeof *z->sorted);
    const uint8_t *end = m + cd_off + cd_size;
    const uint8_t *p = m + cd_off;
    for (uint64_t i = 0; i < n; i++) {
        if ((size_t)(end - p) < 46 || rd32(p) != 0x02014b50)
            return ldm_fail("%s: zip: expected central directory header %llu of %llu at byte %zu, got %s", z->path,
                            (unsigned long long)i + 1, (unsigned long long)n, (size_t)(p - m),
                            (size_t)(end - p) < 46 ? "the end of the directory" : "other bytes");
        ZEntry *e = &z->e[i];
        e->flags = rd16(p + 8);
        e->method = rd16(p + 10);
        e->crc = rd32(p + 16);
        e->csize = rd32(p + 20);
        e->usize = rd32(p + 24);
        size_t nl = rd16(p + 28), xl = rd16(p + 30), cl = rd16(p + 32);
        e->local_off = rd32(p + 42);
        if ((size_t)(end - p) - 46 < nl + xl + cl)
            return ldm_fail("%s: zip: central directory header %llu runs past the directory's end", z->path,
                            (unsigned long long)i + 1);
        e->name = (const char *)p + 46;
        e->name_len = nl;
        int nu = e->usize == 0xFFFFFFFFu, nc = e->csize == 0xFFFFFFFFu, no = e->local_off == 0xFFFFFFFFu;
        if ((nu || nc || no) && zip64_extra(z, e, p + 46 + nl, xl, nu, nc, no) != 0) return -1;
        p += 46 + nl + xl + cl;
        z->sorted[i] = (size_t)i;
    }
    z->n = (size_t)n;
    qsort_r(z->sorted, z->n, sizeof *z->sorted, cmp_entry_idx, z);
    for (size_t i = 1; i < z->n; i++) {
        const ZEntry *a = &z->e[z->sorted[i - 1]], *b = &z->e[z->sorted[i]];
        if (zname_cmp(a, b->name, b->name_len) == 0)
            return ldm_fail("%s: zip: expected unique member names, got '%.*s' twice", z->path, (int)a->name_len,
                            a->name);
    }
    return 0;
}

/* Where member e's data starts: its local header checked against the
 * central directory. */
static int zip_data_offset(const Zip *z, const ZEntry *e, uint64_t *off) {
    const int nl = (int)e->name_len;
    if (e->flags & 1) return ldm_fail("%s: zip: member '%.*s' is encrypted", z->path, nl, e->name);
    if (e->method != 0 && e->method != 8)
        return ldm_fail("%s: zip: member '%.*s': expected compression method 0 (stored) or 8 (deflate), got %u",
                        z->path, nl, e->name, e->method);
    uint64_t lo = e->local_off;
    if (lo > z->size || z->size - lo < 30 || rd32(z->map + lo) != 0x04034b50)
        return ldm_fail("%s: zip: member '%.*s': expected a local file header at byte %llu, got %s", z->path, nl,
                        e->name, (unsigned long long)lo, lo > z->size || z->size - lo < 30 ? "the end of the file" : "other bytes");
    uint64_t lnl = rd16(z->map + lo + 26), lxl = rd16(z->map + lo + 28);
    if (z->size - lo - 30 < lnl + lxl)
        return ldm_fail("%s: zip: member '%.*s': local header runs past the end of the file", z->path, nl, e->name);
    if (lnl != e->name_len || memcmp(z->map + lo + 30, e->name, e->name_len) != 0)
        return ldm_fail("%s: zip: member '%.*s': the local header at byte %llu names another member", z->path, nl,
                        e->name, (unsigned long long)lo);
    uint64_t d = lo + 30 + lnl + lxl;
    if (e->csize > z->size - d)
        return ldm_fail("%s: zip: member '%.*s': expected %llu bytes of data at byte %llu, got %llu (truncated?)",
                        z->path, nl, e->name, (unsigned long long)e->csize, (unsigned long long)d,
                        (unsigned long long)(z->size - d));
    if (e->method == 0 && e->csize != e->usize)
        return ldm_fail("%s: zip: member '%.*s': stored, but its sizes differ (%llu compressed, %llu not)", z->path,
                        nl, e->name, (unsigned long long)e->csize, (unsigned long long)e->usize);
    /* deflate expands at most 1032:1: a larger claim is a corrupt directory */
    if (e->method == 8 && e->usize / 1032 > e->csize + 1)
        return ldm_fail("%s: zip: member '%.*s': %llu bytes cannot inflate to %llu", z->path, nl, e->name,
                        (unsigned long long)e->csize, (unsigned long long)e->usize);
    *off = d;
    return 0;
}

static int zip_inflate(const Zip *z, const ZEntry *e, const uint8_t *src, uint8_t *dst) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return ldm_fail("%s: zip: cannot start zlib", z->path);
    uint64_t in_left = e->csize, out_left = e->usize;
    int rc = Z_OK;
    zs.next_in = (Bytef *)src;
    zs.next_out = dst;
    while (rc == Z_OK) {
        if (zs.avail_in == 0 && in_left) {
            zs.avail_in = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
            in_left -= zs.avail_in;
        }
        if (zs.avail_out == 0 && out_left) {
            zs.avail_out = out_left > (1u << 30) ? (1u << 30) : (uInt)out_left;
            out_left -= zs.avail_out;
        }
        uInt ai = zs.avail_in, ao = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        if (rc == Z_BUF_ERROR && (ai == zs.avail_in && ao == zs.avail_out)) break; /* no progress possible */
        if (rc == Z_BUF_ERROR) rc = Z_OK;
    }
    uint64_t got = (uint64_t)zs.total_out;
    const char *msg = zs.msg;
    inflateEnd(&zs);
    if (rc != Z_STREAM_END || got != e->usize || zs.avail_out != 0 || out_left != 0)
        return ldm_fail("%s: zip: member '%.*s': expected a deflate stream of %llu bytes, got %s%s%s", z->path,
                        (int)e->name_len, e->name, (unsigned long long)e->usize,
                        rc == Z_STREAM_END ? "another length" : "a corrupt or truncated stream", msg ? ": " : "",
                        msg ? msg : "");
    return 0;
}

static int zip_check_crc(const Zip *z, const ZEntry *e, const uint8_t *bytes) {
    uLong c = crc32(0L, Z_NULL, 0);
    for (uint64_t k = 0; k < e->usize;) {
        uInt step = e->usize - k > (1u << 30) ? (1u << 30) : (uInt)(e->usize - k);
        c = crc32(c, bytes + k, step);
        k += step;
    }
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    c = e->crc; /* the fuzzer cannot keep CRCs right: let it past them (image.c does the same for libpng's) */
#endif
    if ((uint32_t)c != e->crc)
        return ldm_fail("%s: zip: member '%.*s': expected CRC-32 %08x (the central directory's), got %08x: the "
                        "file is corrupt", z->path, (int)e->name_len, e->name, e->crc, (unsigned)(uint32_t)c);
    return 0;
}

/* Give back the whole pages of [p, p + n) of the file mapping. */
static void drop_pages(const void *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* ------------------------------------------------------------------------
 * pickle values
 * ------------------------------------------------------------------------ */

typedef enum VKind {
    V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_BYTES, V_TUPLE, V_LIST, V_DICT, V_SET, V_GLOBAL, V_STORAGE, V_TENSOR,
    V_OBJ,
} VKind;

static const char *const kind_names[] = {
    [V_NONE] = "None", [V_BOOL] = "a bool", [V_INT] = "an int", [V_FLOAT] = "a float", [V_STR] = "a str",
    [V_BYTES] = "bytes", [V_TUPLE] = "a tuple", [V_LIST] = "a list", [V_DICT] = "a dict", [V_SET] = "a set",
    [V_GLOBAL] = "a global", [V_STORAGE] = "a storage", [V_TENSOR] = "a tensor", [V_OBJ] = "an opaque object",
};

typedef struct Val Val;
struct Val {
    VKind kind;
    int64_t i;                  /* V_INT, V_BOOL; V_GLOBAL: index in globals[] */
    double d;                   /* V_FLOAT */
    const char *s;              /* V_STR, V_BYTES: into the pickle */
    size_t n;
    Val **items;                /* V_TUPLE, V_LIST, V_SET; V_DICT: key, value, key, value... */
    size_t len, cap;
    StDtype dtype;              /* V_STORAGE */
    long entry;                 /* V_STORAGE: zip entry index */
    int64_t numel;              /* V_STORAGE: elements the pickle says it has */
    Val *storage;               /* V_TENSOR */
    int64_t offset;             /* V_TENSOR: storage offset in elements */
    int ndim;                   /* V_TENSOR */
    int64_t shape[ST_MAX_DIMS]; /* V_TENSOR */
};

/* ------------------------------------------------------------------------
 * the globals a checkpoint may name
 * ------------------------------------------------------------------------ */

enum {
    G_TENSOR,    /* torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta]) */
    G_PARAM,     /* torch._utils._rebuild_parameter(tensor, requires_grad, hooks[, state]) */
    G_DICT,      /* collections.OrderedDict(): a dict */
    G_STORAGE,   /* torch.*Storage: only inside a persistent id */
    G_OPAQUE,    /* a harmless callable: its result is kept as an opaque value, never looked at */
    G_NAME,      /* a harmless name (class, module, dtype) used as a value or dict key, not callable */
};

static const struct {
    const char *module, *name;
    int what;
    StDtype dtype; /* G_STORAGE */
} globals[] = {
    {"torch._utils", "_rebuild_tensor_v2", G_TENSOR, 0},
    {"torch._utils", "_rebuild_parameter", G_PARAM, 0},
    {"torch._utils", "_rebuild_parameter_with_state", G_PARAM, 0},
    {"collections", "OrderedDict", G_DICT, 0},
    {"torch", "FloatStorage", G_STORAGE, ST_F32},
    {"torch", "HalfStorage", G_STORAGE, ST_F16},
    {"torch", "BFloat16Storage", G_STORAGE, ST_BF16},
    {"torch", "DoubleStorage", G_STORAGE, ST_F64},
    {"torch", "LongStorage", G_STORAGE, ST_I64},
    {"torch", "IntStorage", G_STORAGE, ST_I32},
    {"torch", "ShortStorage", G_STORAGE, ST_I16},
    {"torch", "CharStorage", G_STORAGE, ST_I8},
    {"torch", "ByteStorage", G_STORAGE, ST_U8},
    {"torch", "BoolStorage", G_STORAGE, ST_BOOL},
    /* numpy scalars and arrays (e.g. a callback's best score), bytes as protocol 2 writes them */
    {"numpy.core.multiarray", "scalar", G_OPAQUE, 0},
    {"numpy.core.multiarray", "_reconstruct", G_OPAQUE, 0},
    {"numpy._core.multiarray", "scalar", G_OPAQUE, 0},
    {"numpy._core.multiarray", "_reconstruct", G_OPAQUE, 0},
    {"numpy", "dtype", G_OPAQUE, 0},
    {"numpy", "ndarray", G_NAME, 0},
    {"_codecs", "encode", G_OPAQUE, 0},
    {"__builtin__", "set", G_OPAQUE, 0},
    {"builtins", "set", G_OPAQUE, 0},
    {"__builtin__", "frozenset", G_OPAQUE, 0},
    {"builtins", "frozenset", G_OPAQUE, 0},
    /* PyTorch Lightning's callback state: the class is the key of checkpoint["callbacks"] */
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", G_NAME, 0},
    {"pytorch_lightning.callbacks", "model_checkpoint", G_NAME, 0},
    {"torch", "float32", G_NAME, 0},
    {"torch", "float16", G_NAME, 0},
    {"torch", "bfloat16", G_NAME, 0},
};
#define N_GLOBALS ((int)(sizeof globals / sizeof globals[0]))

/* ------------------------------------------------------------------------
 * the machine
 * ------------------------------------------------------------------------ */

typedef struct MemoSlot {
    uint32_t key;
    int used;
    Val *v;
} MemoSlot;

typedef struct Vm {
    const char *path;            /* the archive, for messages */
    const char *member;          /* "archive/data.pkl" */
    const uint8_t *p;            /* the pickle */
    size_t n, pos;               /* its size, the read position */
    size_t op_pos;               /* the opcode being run */
    uint8_t op;
    Val **stack;
    size_t sp, scap;
    size_t *marks;               /* stack heights of the MARKs */
    size_t nmarks, mcap;
    MemoSlot *memo;              /* open addressing, power-of-two capacity */
    size_t memo_cap, memo_n;
    Val **all;                   /* every value, freed together */
    size_t nall, acap;
    const Zip *zip;
    const char *prefix;          /* "archive" (no slash) */
    size_t prefix_len;
} Vm;

static const char *op_name(uint8_t op) {
    switch (op) {
    case 0x28: return "MARK";
    case 0x2e: return "STOP";
    case 0x30: return "POP";
    case 0x31: return "POP_MARK";
    case 0x32: return "DUP";
    case 0x46: return "FLOAT";
    case 0x49: return "INT";
    case 0x4a: return "BININT";
    case 0x4b: return "BININT1";
    case 0x4c: return "LONG";
    case 0x4d: return "BININT2";
    case 0x4e: return "NONE";
    case 0x50: return "PERSID";
    case 0x51: return "BINPERSID";
    case 0x52: return "REDUCE";
    case 0x53: return "STRING";
    case 0x54: return "BINSTRING";
    case 0x55: return "SHORT_BINSTRING";
    case 0x56: return "UNICODE";
    case 0x58: return "BINUNICODE";
    case 0x61: return "APPEND";
    case 0x62: return "BUILD";
    case 0x63: return "GLOBAL";
    case 0x64: return "DICT";
    case 0x7d: return "EMPTY_DICT";
    case 0x65: return "APPENDS";
    case 0x67: return "GET";
    case 0x68: return "BINGET";
    case 0x69: return "INST";
    case 0x6a: return "LONG_BINGET";
    case 0x6c: return "LIST";
    case 0x5d: return "EMPTY_LIST";
    case 0x6f: return "OBJ";
    case 0x70: return "PUT";
    case 0x71: return "BINPUT";
    case 0x72: return "LONG_BINPUT";
    case 0x73: return "SETITEM";
    case 0x74: return "TUPLE";
    case 0x29: return "EMPTY_TUPLE";
    case 0x75: return "SETITEMS";
    case 0x47: return "BINFLOAT";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x42: return "BINBYTES";
    case 0x43: return "SHORT_BINBYTES";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "(not a pickle opcode)";
    }
}

/* "<file>: <member>: byte N: opcode 0xXX NAME: <message>" */
static int vm_fail(const Vm *vm, const char *fmt, ...) LDM_PRINTF(2, 3);
static int vm_fail(const Vm *vm, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ldm_fail("%s: %s: byte %zu: opcode 0x%02x %s: %s", vm->path, vm->member, vm->op_pos, vm->op,
                    op_name(vm->op), msg);
}

static Val *vnew(Vm *vm, VKind k) {
    if (vm->nall == vm->acap) {
        vm->acap = vm->acap ? 2 * vm->acap : 256;
        vm->all = ldm_xrealloc(vm->all, vm->acap * sizeof *vm->all);
    }
    Val *v = ldm_xcalloc(1, sizeof *v);
    v->kind = k;
    vm->all[vm->nall++] = v;
    return v;
}

static void vappend(Val *c, Val *x) {
    if (c->len == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 4;
        c->items = ldm_xrealloc(c->items, c->cap * sizeof *c->items);
    }
    c->items[c->len++] = x;
}

static void vm_free(Vm *vm) {
    for (size_t i = 0; i < vm->nall; i++) {
        free(vm->all[i]->items);
        free(vm->all[i]);
    }
    free(vm->all);
    free(vm->stack);
    free(vm->marks);
    free(vm->memo);
}

static void push(Vm *vm, Val *v) {
    if (vm->sp == vm->scap) {
        vm->scap = vm->scap ? 2 * vm->scap : 64;
        vm->stack = ldm_xrealloc(vm->stack, vm->scap * sizeof *vm->stack);
    }
    vm->stack[vm->sp++] = v;
}

static size_t floor_(const Vm *vm) { return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0; }

static Val *pop(Vm *vm) {
    if (vm->sp <= floor_(vm)) {
        vm_fail(vm, "expected a value on the stack, got %s", vm->sp ? "a MARK" : "an empty stack");
        return NULL;
    }
    return vm->stack[--vm->sp];
}

static Val *top(Vm *vm) {
    if (vm->sp <= floor_(vm)) {
        vm_fail(vm, "expected a value on the stack, got %s", vm->sp ? "a MARK" : "an empty stack");
        return NULL;
    }
    return vm->stack[vm->sp - 1];
}

/* The value just below stack index base (a MARK's), the list or dict that
 * APPENDS / SETITEMS fill. */
static Val *below(Vm *vm, size_t base) {
    if (base == 0 || base <= floor_(vm)) {
        vm_fail(vm, "expected a list, set or dict below the MARK, got %s", base ? "another MARK" : "nothing");
        return NULL;
    }
    return vm->stack[base - 1];
}

/* The values above the last MARK: *base = their first index; the MARK is popped. */
static int pop_mark(Vm *vm, size_t *base) {
    if (!vm->nmarks) return vm_fail(vm, "expected a MARK before it, got none");
    *base = vm->marks[--vm->nmarks];
    return 0;
}

static int need(Vm *vm, size_t k) {
    if (vm->n - vm->pos < k)
        return vm_fail(vm, "expected %zu more bytes of argument, got %zu (data.pkl truncated)", k, vm->n - vm->pos);
    return 0;
}

static MemoSlot *memo_slot(Vm *vm, uint32_t key) {
    size_t h = (size_t)(key * 2654435761u) & (vm->memo_cap - 1);
    while (vm->memo[h].used && vm->memo[h].key != key) h = (h + 1) & (vm->memo_cap - 1);
    return &vm->memo[h];
}

static void memo_put(Vm *vm, uint32_t key, Val *v) {
    if (2 * (vm->memo_n + 1) > vm->memo_cap) {
        MemoSlot *old = vm->memo;
        size_t oc = vm->memo_cap;
        vm->memo_cap = oc ? 2 * oc : 64;
        vm->memo = ldm_xcalloc(vm->memo_cap, sizeof *vm->memo);
        for (size_t i = 0; i < oc; i++)
            if (old[i].used) *memo_slot(vm, old[i].key) = old[i];
        free(old);
    }
    MemoSlot *s = memo_slot(vm, key);
    if (!s->used) vm->memo_n++;
    s->used = 1;
    s->key = key;
    s->v = v;
}

static Val *memo_get(Vm *vm, uint32_t key) {
    if (!vm->memo_cap) return NULL;
    MemoSlot *s = memo_slot(vm, key);
    return s->used ? s->v : NULL;
}

static int is_str(const Val *v, const char *s) {
    return v && v->kind == V_STR && v->n == strlen(s) && memcmp(v->s, s, v->n) == 0;
}

static const char *kname(const Val *v) { return kind_names[v->kind]; }

/* GLOBAL module.name: an index in globals[], or refused. */
static int resolve_global(Vm *vm, const char *mod, size_t ml, const char *name, size_t nl, Val **out) {
    for (int g = 0; g < N_GLOBALS; g++) {
        if (strlen(globals[g].module) == ml && !memcmp(globals[g].module, mod, ml) && strlen(globals[g].name) == nl &&
            !memcmp(globals[g].name, name, nl)) {
            *out = vnew(vm, V_GLOBAL);
            (*out)->i = g;
            return 0;
        }
    }
    return vm_fail(vm, "refused global '%.*s.%.*s': a checkpoint's pickle may name only the torch, collections and "
                       "numpy globals that rebuild tensors and dicts (and a few harmless ones PyTorch Lightning "
                       "leaves); nothing it names is ever run",
                   (int)(ml > 200 ? 200 : ml), mod, (int)(nl > 200 ? 200 : nl), name);
}

/* int64 value of an int (bools count, as in Python) */
static int as_int(const Val *v, int64_t *out) {
    if (!v || (v->kind != V_INT && v->kind != V_BOOL)) return -1;
    *out = v->i;
    return 0;
}

/* torch._utils._rebuild_tensor_v2 */
static int rebuild_tensor(Vm *vm, const Val *args, Val **out) {
    if (args->len != 6 && args->len != 7)
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected 6 or 7 arguments (storage, storage_offset, "
                           "size, stride, requires_grad, backward_hooks[, metadata]), got %zu", args->len);
    const Val *st = args->items[0], *size = args->items[2], *stride = args->items[3];
    if (st->kind != V_STORAGE)
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected a storage (a persistent id) as argument 1, "
                           "got %s", kname(st));
    int64_t off;
    if (as_int(args->items[1], &off) != 0 || off < 0)
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected a storage offset >= 0, got %s",
                       args->items[1]->kind == V_INT ? "a negative one" : kname(args->items[1]));
    if (size->kind != V_TUPLE || stride->kind != V_TUPLE)
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected size and stride tuples, got %s and %s",
                       kname(size), kname(stride));
    if (size->len > ST_MAX_DIMS)
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected at most %d dimensions, got %zu", ST_MAX_DIMS,
                       size->len);
    if (stride->len != size->len)
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected a stride per dimension (%zu), got %zu",
                       size->len, stride->len);
    Val *t = vnew(vm, V_TENSOR);
    t->storage = (Val *)st;
    t->offset = off;
    t->ndim = (int)size->len;
    int64_t numel = 1, sv[ST_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) {
        if (as_int(size->items[d], &t->shape[d]) != 0 || t->shape[d] < 0)
            return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected size[%d] to be an int >= 0, got %s", d,
                           kname(size->items[d]));
        if (as_int(stride->items[d], &sv[d]) != 0)
            return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected stride[%d] to be an int, got %s", d,
                           kname(stride->items[d]));
        if (__builtin_mul_overflow(numel, t->shape[d], &numel))
            return vm_fail(vm, "torch._utils._rebuild_tensor_v2: expected a size whose element count fits in 64 "
                               "bits, got an overflow at size[%d]", d);
    }
    if (numel > 0) { /* row-major contiguous: what every SD checkpoint holds */
        int64_t want = 1;
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (t->shape[d] != 1 && sv[d] != want) {
                char bs[160], bt[160];
                shape_str(t->ndim, t->shape, bs, sizeof bs);
                shape_str(t->ndim, sv, bt, sizeof bt);
                return vm_fail(vm, "torch._utils._rebuild_tensor_v2: a tensor of size %s with stride %s is not "
                                   "contiguous (stride[%d] should be %lld): only contiguous tensors are read; "
                                   "save a .contiguous() copy", bs, bt, d, (long long)want);
            }
            want *= t->shape[d];
        }
    }
    const ZEntry *e = &vm->zip->e[st->entry];
    uint64_t es = (uint64_t)dt_size(st->dtype), need_el, need_b;
    if (__builtin_add_overflow((uint64_t)off, (uint64_t)numel, &need_el) ||
        __builtin_mul_overflow(need_el, es, &need_b) || (numel > 0 && need_b > e->usize))
        return vm_fail(vm, "torch._utils._rebuild_tensor_v2: storage '%.*s' (%s) has %llu bytes, the tensor needs "
                           "%lld elements from element offset %lld: the storage is too short",
                       (int)e->name_len, e->name, dt_name(st->dtype), (unsigned long long)e->usize,
                       (long long)numel, (long long)off);
    *out = t;
    return 0;
}

/* REDUCE callable(*args) / NEWOBJ cls(*args) */
static int call(Vm *vm, const Val *fn, const Val *args, Val **out) {
    if (fn->kind != V_GLOBAL)
        return vm_fail(vm, "expected a global to call, got %s (only allowed globals are callable)", kname(fn));
    if (args->kind != V_TUPLE) return vm_fail(vm, "expected an argument tuple, got %s", kname(args));
    int g = (int)fn->i;
    switch (globals[g].what) {
    case G_TENSOR: return rebuild_tensor(vm, args, out);
    case G_PARAM:
        if (args->len < 1 || args->items[0]->kind != V_TENSOR)
            return vm_fail(vm, "%s.%s: expected a tensor as argument 1, got %s", globals[g].module, globals[g].name,
                           args->len ? kname(args->items[0]) : "no argument");
        *out = args->items[0];
        return 0;
    case G_DICT: {
        Val *d = vnew(vm, V_DICT);
        /* OrderedDict() or OrderedDict([(k, v), ...]) */
        if (args->len > 1) return vm_fail(vm, "collections.OrderedDict: expected at most 1 argument, got %zu", args->len);
        if (args->len == 1) {
            const Val *l = args->items[0];
            if (l->kind != V_LIST && l->kind != V_TUPLE)
                return vm_fail(vm, "collections.OrderedDict: expected a list of pairs, got %s", kname(l));
            for (size_t k = 0; k < l->len; k++) {
                const Val *pr = l->items[k];
                if ((pr->kind != V_LIST && pr->kind != V_TUPLE) || pr->len != 2)
                    return vm_fail(vm, "collections.OrderedDict: expected (key, value) pairs, got %s", kname(pr));
                vappend(d, pr->items[0]);
                vappend(d, pr->items[1]);
            }
        }
        *out = d;
        return 0;
    }
    case G_OPAQUE: *out = vnew(vm, V_OBJ); return 0;
    case G_NAME:
        /* NEWOBJ of a harmless class (cls.__new__(cls): no code of the
         * class runs in Python either; its state comes by BUILD) */
        if (vm->op == 0x81) {
            *out = vnew(vm, V_OBJ);
            return 0;
        }
        /* fall through */
    default:
        return vm_fail(vm, "refused call of '%s.%s': it is allowed as a name, not as a callable", globals[g].module,
                       globals[g].name);
    }
}

/* BINPERSID ('storage', torch.XStorage, key, location, numel) */
static int persistent_load(Vm *vm, const Val *pid, Val **out) {
    if (pid->kind != V_TUPLE || pid->len != 5 || !is_str(pid->items[0], "storage"))
        return vm_fail(vm, "expected a persistent id ('storage', type, key, location, numel), got %s of %zu",
                       kname(pid), pid->kind == V_TUPLE ? pid->len : (size_t)0);
    const Val *ty = pid->items[1], *key = pid->items[2];
    if (ty->kind != V_GLOBAL || globals[ty->i].what != G_STORAGE)
        return vm_fail(vm, "expected a torch storage type in the persistent id, got %s%s%s%s", kname(ty),
                       ty->kind == V_GLOBAL ? " " : "", ty->kind == V_GLOBAL ? globals[ty->i].module : "",
                       ty->kind == V_GLOBAL ? "." : "");
    if (key->kind != V_STR || key->n == 0 || key->n > 64 || memchr(key->s, '/', key->n) || memchr(key->s, 0, key->n))
        return vm_fail(vm, "expected a storage key (a short name of the archive's data/ directory), got %s",
                       kname(key));
    int64_t numel;
    if (as_int(pid->items[4], &numel) != 0 || numel < 0)
        return vm_fail(vm, "expected the storage's element count (an int >= 0), got %s", kname(pid->items[4]));
    char name[160];
    int nl = snprintf(name, sizeof name, "%.*s/data/%.*s", (int)vm->prefix_len, vm->prefix, (int)key->n, key->s);
    long e = zip_find(vm->zip, name, (size_t)nl);
    if (e < 0) return vm_fail(vm, "storage '%.*s': the archive has no member '%s'", (int)key->n, key->s, name);
    Val *s = vnew(vm, V_STORAGE);
    s->dtype = globals[ty->i].dtype;
    s->entry = e;
    s->numel = numel;
    uint64_t nb;
    if (__builtin_mul_overflow((uint64_t)numel, (uint64_t)dt_size(s->dtype), &nb) || nb > vm->zip->e[e].usize)
        return vm_fail(vm, "storage '%.*s': %lld elements of %s do not fit in member '%s' (%llu bytes): the storage "
                           "is too short", (int)key->n, key->s, (long long)numel, dt_name(s->dtype), name,
                       (unsigned long long)vm->zip->e[e].usize);
    *out = s;
    return 0;
}

/* A string argument of n bytes at pos. */
static int read_str(Vm *vm, uint64_t n, VKind k) {
    if (n > vm->n - vm->pos) return need(vm, (size_t)n);
    Val *v = vnew(vm, k);
    v->s = (const char *)vm->p + vm->pos;
    v->n = (size_t)n;
    vm->pos += (size_t)n;
    push(vm, v);
    return 0;
}

/* Run the pickle to STOP; *result is its value. */
static int vm_run(Vm *vm, Val **result) {
    for (;;) {
        if (vm->pos >= vm->n) {
            vm->op_pos = vm->pos, vm->op = 0;
            return ldm_fail("%s: %s: byte %zu: expected an opcode (STOP ends a pickle), got the end of the data",
                            vm->path, vm->member, vm->pos);
        }
        vm->op_pos = vm->pos;
        uint8_t op = vm->op = vm->p[vm->pos++];
        const uint8_t *a = vm->p + vm->pos;
        Val *v, *x, *y;
        size_t base = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if (need(vm, 1)) return -1;
            if (a[0] < 2 || a[0] > 5) return vm_fail(vm, "expected protocol 2 to 5, got %u", a[0]);
            vm->pos++;
            break;
        case 0x95: /* FRAME */
            if (need(vm, 8)) return -1;
            vm->pos += 8;
            break;
        case 0x2e: /* STOP */
            if (!(*result = pop(vm))) return -1;
            return 0;
        case 0x7d: push(vm, vnew(vm, V_DICT)); break;   /* EMPTY_DICT */
        case 0x5d: push(vm, vnew(vm, V_LIST)); break;   /* EMPTY_LIST */
        case 0x29: push(vm, vnew(vm, V_TUPLE)); break;  /* EMPTY_TUPLE */
        case 0x8f: push(vm, vnew(vm, V_SET)); break;    /* EMPTY_SET */
        case 0x4e: push(vm, vnew(vm, V_NONE)); break;   /* NONE */
        case 0x88: case 0x89:                           /* NEWTRUE, NEWFALSE */
            v = vnew(vm, V_BOOL);
            v->i = op == 0x88;
            push(vm, v);
            break;
        case 0x28: /* MARK */
            if (vm->nmarks == vm->mcap) {
                vm->mcap = vm->mcap ? 2 * vm->mcap : 16;
                vm->marks = ldm_xrealloc(vm->marks, vm->mcap * sizeof *vm->marks);
            }
            vm->marks[vm->nmarks++] = vm->sp;
            break;
        case 0x58: case 0x42: /* BINUNICODE, BINBYTES */
            if (need(vm, 4)) return -1;
            vm->pos += 4;
            if (read_str(vm, rd32(a), op == 0x58 ? V_STR : V_BYTES)) return -1;
            break;
        case 0x8d: case 0x8e: /* BINUNICODE8, BINBYTES8 */
            if (need(vm, 8)) return -1;
            vm->pos += 8;
            if (read_str(vm, rd64(a), op == 0x8d ? V_STR : V_BYTES)) return -1;
            break;
        case 0x8c: case 0x55: case 0x43: /* SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES */
            if (need(vm, 1)) return -1;
            vm->pos += 1;
            if (read_str(vm, a[0], op == 0x43 ? V_BYTES : V_STR)) return -1;
            break;
        case 0x54: /* BINSTRING: signed 4-byte length */
            if (need(vm, 4)) return -1;
            if ((int32_t)rd32(a) < 0) return vm_fail(vm, "expected a length >= 0, got %d", (int32_t)rd32(a));
            vm->pos += 4;
            if (read_str(vm, rd32(a), V_STR)) return -1;
            break;
        case 0x4a: case 0x4b: case 0x4d: { /* BININT, BININT1, BININT2 */
            size_t k = op == 0x4a ? 4 : op == 0x4b ? 1 : 2;
            if (need(vm, k)) return -1;
            v = vnew(vm, V_INT);
            v->i = op == 0x4a ? (int32_t)rd32(a) : op == 0x4b ? a[0] : rd16(a);
            vm->pos += k;
            push(vm, v);
            break;
        }
        case 0x8a: case 0x8b: { /* LONG1, LONG4: little-endian two's complement */
            uint64_t k;
            if (op == 0x8a) {
                if (need(vm, 1)) return -1;
                k = a[0];
                vm->pos += 1;
            } else {
                if (need(vm, 4)) return -1;
                if ((int32_t)rd32(a) < 0) return vm_fail(vm, "expected a length >= 0, got %d", (int32_t)rd32(a));
                k = rd32(a);
                vm->pos += 4;
            }
            if (need(vm, (size_t)k)) return -1;
            const uint8_t *b = vm->p + vm->pos;
            if (k <= 8) {
                uint64_t u = 0;
                for (uint64_t j = 0; j < k; j++) u |= (uint64_t)b[j] << (8 * j);
                if (k && k < 8 && (b[k - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * k); /* sign-extend */
                v = vnew(vm, V_INT);
                v->i = (int64_t)u;
            } else {
                v = vnew(vm, V_OBJ); /* a Python int beyond 64 bits: kept, never looked at */
            }
            vm->pos += (size_t)k;
            push(vm, v);
            break;
        }
        case 0x47: { /* BINFLOAT: big-endian double */
            if (need(vm, 8)) return -1;
            uint64_t u = 0;
            for (int j = 0; j < 8; j++) u = (u << 8) | a[j];
            v = vnew(vm, V_FLOAT);
            memcpy(&v->d, &u, 8);
            vm->pos += 8;
            push(vm, v);
            break;
        }
        case 0x74: /* TUPLE */
        case 0x91: /* FROZENSET */
            if (pop_mark(vm, &base)) return -1;
            v = vnew(vm, op == 0x74 ? V_TUPLE : V_SET);
            for (size_t k = base; k < vm->sp; k++) vappend(v, vm->stack[k]);
            vm->sp = base;
            push(vm, v);
            break;
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            size_t k = (size_t)(op - 0x84);
            if (vm->sp < floor_(vm) + k) return vm_fail(vm, "expected %zu values on the stack, got fewer", k);
            v = vnew(vm, V_TUPLE);
            for (size_t j = vm->sp - k; j < vm->sp; j++) vappend(v, vm->stack[j]);
            vm->sp -= k;
            push(vm, v);
            break;
        }
        case 0x61: /* APPEND */
            if (!(x = pop(vm)) || !(v = top(vm))) return -1;
            if (v->kind == V_LIST) vappend(v, x);
            else if (v->kind != V_OBJ) return vm_fail(vm, "expected a list to append to, got %s", kname(v));
            break;
        case 0x65: /* APPENDS */
        case 0x90: /* ADDITEMS */
            if (pop_mark(vm, &base) || !(v = below(vm, base))) return -1;
            if (v->kind != (op == 0x65 ? V_LIST : V_SET) && v->kind != V_OBJ)
                return vm_fail(vm, "expected a %s below the MARK, got %s", op == 0x65 ? "list" : "set", kname(v));
            for (size_t k = base; k < vm->sp; k++)
                if (v->kind != V_OBJ) vappend(v, vm->stack[k]);
            vm->sp = base;
            break;
        case 0x73: /* SETITEM */
            if (!(y = pop(vm)) || !(x = pop(vm)) || !(v = top(vm))) return -1;
            if (v->kind == V_DICT) vappend(v, x), vappend(v, y);
            else if (v->kind != V_OBJ) return vm_fail(vm, "expected a dict to set an item of, got %s", kname(v));
            break;
        case 0x75: /* SETITEMS */
            if (pop_mark(vm, &base) || !(v = below(vm, base))) return -1;
            if (v->kind != V_DICT && v->kind != V_OBJ)
                return vm_fail(vm, "expected a dict below the MARK, got %s", kname(v));
            if ((vm->sp - base) % 2) return vm_fail(vm, "expected key, value pairs, got an odd count %zu", vm->sp - base);
            for (size_t k = base; k < vm->sp; k++)
                if (v->kind == V_DICT) vappend(v, vm->stack[k]);
            vm->sp = base;
            break;
        case 0x71: case 0x72: case 0x94: { /* BINPUT, LONG_BINPUT, MEMOIZE */
            uint32_t key;
            if (op == 0x94) {
                key = (uint32_t)vm->memo_n;
            } else {
                size_t k = op == 0x71 ? 1 : 4;
                if (need(vm, k)) return -1;
                key = op == 0x71 ? a[0] : rd32(a);
                vm->pos += k;
            }
            if (!(v = top(vm))) return -1;
            memo_put(vm, key, v);
            break;
        }
        case 0x68: case 0x6a: { /* BINGET, LONG_BINGET */
            size_t k = op == 0x68 ? 1 : 4;
            if (need(vm, k)) return -1;
            uint32_t key = op == 0x68 ? a[0] : rd32(a);
            vm->pos += k;
            if (!(v = memo_get(vm, key))) return vm_fail(vm, "memo entry %u was never stored", key);
            push(vm, v);
            break;
        }
        case 0x63: { /* GLOBAL "module\nname\n" */
            const char *s = (const char *)a;
            size_t left = vm->n - vm->pos;
            const char *nl1 = memchr(s, '\n', left < 512 ? left : 512);
            const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(s + (left < 1024 ? left : 1024) - (nl1 + 1))) : NULL;
            if (!nl2) return vm_fail(vm, "expected 'module\\nname\\n' (each under 512 bytes), got no newlines");
            vm->pos += (size_t)(nl2 + 1 - s);
            if (resolve_global(vm, s, (size_t)(nl1 - s), nl1 + 1, (size_t)(nl2 - nl1 - 1), &v)) return -1;
            push(vm, v);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if (!(y = pop(vm)) || !(x = pop(vm))) return -1;
            if (x->kind != V_STR || y->kind != V_STR)
                return vm_fail(vm, "expected module and name strings, got %s and %s", kname(x), kname(y));
            if (resolve_global(vm, x->s, x->n, y->s, y->n, &v)) return -1;
            push(vm, v);
            break;
        case 0x52: /* REDUCE */
        case 0x81: /* NEWOBJ */
            if (!(y = pop(vm)) || !(x = pop(vm))) return -1;
            if (call(vm, x, y, &v)) return -1;
            push(vm, v);
            break;
        case 0x62: /* BUILD: the state of an OrderedDict (its _metadata) or of an opaque value: ignored */
            if (!(y = pop(vm)) || !(v = top(vm))) return -1;
            if (v->kind != V_DICT && v->kind != V_OBJ && v->kind != V_TENSOR)
                return vm_fail(vm, "expected a dict or an opaque value to set the state of, got %s", kname(v));
            break;
        case 0x51: /* BINPERSID */
            if (!(x = pop(vm))) return -1;
            if (persistent_load(vm, x, &v)) return -1;
            push(vm, v);
            break;
        case 0x32: /* DUP */
            if (!(v = top(vm))) return -1;
            push(vm, v);
            break;
        case 0x30: /* POP */
            if (vm->sp > floor_(vm)) vm->sp--;
            else if (vm->nmarks) vm->nmarks--; /* Python's POP discards a MARK on top */
            else return vm_fail(vm, "expected a value on the stack, got an empty stack");
            break;
        case 0x31: /* POP_MARK */
            if (pop_mark(vm, &base)) return -1;
            vm->sp = base;
            break;
        default:
            return vm_fail(vm, "unsupported opcode: not one that torch.save writes (refused, nothing is run)");
        }
    }
}

/* ------------------------------------------------------------------------
 * the checkpoint
 * ------------------------------------------------------------------------ */

/* The uncompressed bytes of a small member (data.pkl, version): in the
 * mapping, or inflated into *owned (malloc'd). CRC-checked. */
static int load_small(const Zip *z, ZEntry *e, const uint8_t **bytes, uint8_t **owned) {
    uint64_t off;
    *owned = NULL;
    if (zip_data_offset(z, e, &off) != 0) return -1;
    if (e->usize > CKPT_MAX_PICKLE)
        return ldm_fail("%s: zip: member '%.*s': expected at most %llu bytes, got %llu", z->path, (int)e->name_len,
                        e->name, (unsigned long long)CKPT_MAX_PICKLE, (unsigned long long)e->usize);
    if (e->method == 0) {
        *bytes = z->map + off;
    } else {
        *owned = ldm_xmalloc((size_t)e->usize + 1);
        if (zip_inflate(z, e, z->map + off, *owned) != 0) {
            free(*owned);
            *owned = NULL;
            return -1;
        }
        *bytes = *owned;
    }
    if (zip_check_crc(z, e, *bytes) != 0) {
        free(*owned);
        *owned = NULL;
        return -1;
    }
    return 0;
}

/* The <dir> of the one "<dir>/data.pkl" member. */
static int find_pickle(const Zip *z, long *idx) {
    *idx = -1;
    for (size_t i = 0; i < z->n; i++) {
        const ZEntry *e = &z->e[i];
        const char *sl = memchr(e->name, '/', e->name_len);
        if (!sl || sl == e->name || (size_t)(e->name + e->name_len - sl) != 9 || memcmp(sl, "/data.pkl", 9)) continue;
        if (*idx >= 0)
            return ldm_fail("%s: expected one '<dir>/data.pkl' in the archive, got '%.*s' and '%.*s'", z->path,
                            (int)z->e[*idx].name_len, z->e[*idx].name, (int)e->name_len, e->name);
        *idx = (long)i;
    }
    if (*idx < 0)
        return ldm_fail("%s: a zip archive without '<dir>/data.pkl': not a PyTorch checkpoint (torch.save's format)",
                        z->path);
    return 0;
}

/* The state dict: checkpoint["state_dict"], or the top-level dict. */
static const Val *state_dict(const Val *top) {
    for (size_t k = 0; k + 1 < top->len; k += 2)
        if (is_str(top->items[k], "state_dict") && top->items[k + 1]->kind == V_DICT) return top->items[k + 1];
    return top;
}

static int cmp_name_idx(const void *x, const void *y) {
    const StTensor *a = *(const StTensor *const *)x, *b = *(const StTensor *const *)y;
    int c = strcmp(a->name, b->name);
    if (c) return c;
    return (a > b) - (a < b);
}

/* Put the members the tensors read in place (stored: the mapping; deflated:
 * f->aux), each CRC-checked, and point the tensors at them. */
static int load_storages(StFile *f, Zip *z, Val **tv) {
    uint64_t aux = 0;
    uint64_t *offs = ldm_xcalloc(z->n + 1, sizeof *offs);
    int rc = 0;
    for (size_t i = 0; i < z->n && rc == 0; i++) {
        ZEntry *e = &z->e[i];
        if (!e->want) continue;
        rc = zip_data_offset(z, e, &offs[i]);
        if (rc == 0 && e->method == 8) {
            e->aux_off = aux;
            if (__builtin_add_overflow(aux, (e->usize + 63) & ~(uint64_t)63, &aux) || aux > (uint64_t)SIZE_MAX / 2)
                rc = ldm_fail("%s: zip: the compressed storages inflate to more than this machine can address", z->path);
        }
    }
    if (rc == 0 && aux) {
        /* shared anonymous memory: madvise(MADV_DONTNEED) as the binder
         * gives pages back drops only the page tables, not the contents */
        void *m = mmap(NULL, (size_t)aux, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) rc = ldm_fail("%s: cannot map %llu bytes for the inflated storages", z->path, (unsigned long long)aux);
        else f->aux = m, f->aux_size = (size_t)aux;
    }
    for (size_t i = 0; i < z->n && rc == 0; i++) {
        ZEntry *e = &z->e[i];
        if (!e->want) continue;
        if (e->method == 0) {
            e->bytes = z->map + offs[i];
            rc = zip_check_crc(z, e, e->bytes);
            drop_pages(e->bytes, (size_t)e->usize); /* read again when bound */
        } else {
            uint8_t *dst = f->aux + e->aux_off;
            rc = zip_inflate(z, e, z->map + offs[i], dst);
            if (rc == 0) rc = zip_check_crc(z, e, dst);
            e->bytes = dst;
        }
    }
    free(offs);
    if (rc == 0 && f->aux) mprotect(f->aux, f->aux_size, PROT_READ);
    for (int k = 0; k < f->n_tensors && rc == 0; k++) {
        StTensor *t = &f->tensors[k];
        const Val *st = tv[k]->storage;
        if (t->numel == 0) /* its member was not loaded: any valid pointer */
            t->data = f->map;
        else
            t->data = z->e[st->entry].bytes + (size_t)tv[k]->offset * dt_size(t->dtype);
    }
    return rc;
}

int ckpt_parse(StFile *f) {
    Zip z = {.path = f->path, .map = f->map, .size = f->size};
    Vm vm;
    memset(&vm, 0, sizeof vm);
    uint8_t *owned = NULL;
    Val **tv = NULL;
    int rc = -1;
    long pk;
    if (zip_open(&z) != 0 || find_pickle(&z, &pk) != 0) goto out;
    ZEntry *pe = &z.e[pk];
    /* byteorder (newer torch): the storages' byte order */
    char name[160];
    int pl = (int)(memchr(pe->name, '/', pe->name_len) ? (const char *)memchr(pe->name, '/', pe->name_len) - pe->name : 0);
    if (pl > 100) {
        ldm_fail("%s: expected a short top directory in the archive, got %d bytes", f->path, pl);
        goto out;
    }
    int nl = snprintf(name, sizeof name, "%.*s/byteorder", pl, pe->name);
    long bo = zip_find(&z, name, (size_t)nl);
    if (bo >= 0) {
        const uint8_t *b;
        uint8_t *ob;
        if (load_small(&z, &z.e[bo], &b, &ob) != 0) goto out;
        int little = z.e[bo].usize >= 6 && !memcmp(b, "little", 6);
        free(ob);
        if (!little) {
            ldm_fail("%s: %s: expected \"little\" (the byte order of the storages), got another: big-endian "
                     "checkpoints are not read", f->path, name);
            goto out;
        }
    }
    const uint8_t *pickle;
    if (load_small(&z, pe, &pickle, &owned) != 0) goto out;
    char member[160];
    snprintf(member, sizeof member, "%.*s", (int)pe->name_len, pe->name);
    vm.path = f->path;
    vm.member = member;
    vm.p = pickle;
    vm.n = (size_t)pe->usize;
    vm.zip = &z;
    vm.prefix = pe->name;
    vm.prefix_len = (size_t)pl;
    Val *result = NULL;
    if (vm_run(&vm, &result) != 0) goto out;
    if (result->kind != V_DICT) {
        ldm_fail("%s: %s: expected a dict (a state dict, or a checkpoint with \"state_dict\"), got %s", f->path,
                 member, kname(result));
        goto out;
    }
    const Val *sd = state_dict(result);
    /* The tensors: the dict's string keys with a tensor value, and one
     * level of dicts in it, named "outer.inner" (a webui textual-inversion
     * .pt: {'string_to_param': {'*': tensor}, ...} -> "string_to_param.*");
     * other values (numbers, strings, deeper dicts) are not weights. */
    size_t nt = 0;
    for (size_t k = 0; k + 1 < sd->len; k += 2) {
        const Val *key = sd->items[k], *v = sd->items[k + 1];
        if (key->kind != V_STR) continue;
        if (v->kind == V_TENSOR) nt++;
        if (v->kind == V_DICT)
            for (size_t j = 0; j + 1 < v->len; j += 2) nt += v->items[j]->kind == V_STR && v->items[j + 1]->kind == V_TENSOR;
    }
    f->tensors = ldm_xcalloc(nt + 1, sizeof *f->tensors);
    tv = ldm_xcalloc(nt + 1, sizeof *tv);
    for (size_t k = 0; k + 1 < sd->len; k += 2) {
        const Val *outer = sd->items[k], *v = sd->items[k + 1];
        if (outer->kind != V_STR || (v->kind != V_TENSOR && v->kind != V_DICT)) continue;
        size_t nj = v->kind == V_DICT ? v->len : 2;
        for (size_t j = 0; j + 1 < nj; j += 2) {
            const Val *key = v->kind == V_DICT ? v->items[j] : outer, *t = v->kind == V_DICT ? v->items[j + 1] : v;
            if (key->kind != V_STR || t->kind != V_TENSOR) continue;
            size_t pre = v->kind == V_DICT ? outer->n + 1 : 0; /* "outer." */
            if (memchr(key->s, 0, key->n) || (pre && memchr(outer->s, 0, outer->n)) || pre + key->n > 4096) {
                ldm_fail("%s: %s: tensor name '%.*s%s%.*s...': expected a name without NUL bytes and under 4096 bytes",
                         f->path, member, (int)(pre ? (outer->n > 64 ? 64 : outer->n) : 0), outer->s, pre ? "." : "",
                         (int)(key->n > 64 ? 64 : key->n), key->s);
                goto out;
            }
            StTensor *st = &f->tensors[f->n_tensors];
            tv[f->n_tensors++] = (Val *)t;
            st->name = ldm_xmalloc(pre + key->n + 1);
            if (pre) memcpy(st->name, outer->s, outer->n), st->name[outer->n] = '.';
            memcpy(st->name + pre, key->s, key->n);
            st->name[pre + key->n] = 0;
            st->dtype = t->storage->dtype;
            st->ndim = t->ndim;
            st->numel = 1;
            for (int d = 0; d < t->ndim; d++) st->shape[d] = t->shape[d], st->numel *= t->shape[d];
            st->nbytes = (size_t)st->numel * dt_size(st->dtype);
        }
    }
    /* a key set twice: the last value wins, as in Python (kept in first place) */
    if (f->n_tensors > 1) {
        StTensor **by = ldm_xmalloc((size_t)f->n_tensors * sizeof *by);
        for (int k = 0; k < f->n_tensors; k++) by[k] = &f->tensors[k];
        qsort(by, (size_t)f->n_tensors, sizeof *by, cmp_name_idx);
        int dup = 0;
        for (int k = 1; k < f->n_tensors; k++) {
            if (strcmp(by[k - 1]->name, by[k]->name) == 0) {
                StTensor *first = by[k - 1], *later = by[k];
                size_t fi = (size_t)(first - f->tensors), li = (size_t)(later - f->tensors);
                free(first->name);
                *first = *later; /* value of the later, place of the first */
                later->name = NULL;
                tv[fi] = tv[li];
                tv[li] = NULL;
                by[k] = first;
                dup = 1;
            }
        }
        free(by);
        if (dup) {
            int w = 0;
            for (int k = 0; k < f->n_tensors; k++)
                if (tv[k]) f->tensors[w] = f->tensors[k], tv[w++] = tv[k];
            f->n_tensors = w;
        }
    }
    for (int k = 0; k < f->n_tensors; k++)
        if (f->tensors[k].numel > 0) z.e[tv[k]->storage->entry].want = 1;
    if (load_storages(f, &z, tv) != 0) goto out;
    rc = 0;
out:
    free(tv);
    free(owned);
    vm_free(&vm);
    free(z.e);
    free(z.sorted);
    return rc;
}
