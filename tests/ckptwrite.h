/*
 * ckptwrite.h - PyTorch .ckpt files written without torch, for the tests
 * and the fuzz seeds: a zip archive laid out as torch.save (>= 1.6) writes
 * it, holding a protocol-2 pickle as Python's pickler emits it for a
 * checkpoint dict.
 *
 * The archive: `<dir>/data.pkl`, `<dir>/byteorder` ("little"),
 * `<dir>/data/<k>` (storage k's raw little-endian bytes), `<dir>/version`
 * ("3\n"); members stored (or deflated, ck.deflate) with their data 64-byte
 * aligned by an "FB" padding extra field, and (ck.zip64, as torch writes
 * every archive) zip64 extra fields and the zip64 end records.
 *
 * The pickle, for tensors t0, t1, ... (names and memo indices as Python's
 * pickler gives them, with BINPUT after each new object and BINGET for the
 * repeated strings and globals):
 *   {'epoch': 6, 'global_step': 470000, 'pytorch-lightning_version': '1.4.2',
 *    'state_dict': OrderedDict([(name, _rebuild_tensor_v2(
 *        persistent_id(('storage', torch.FloatStorage, '0', 'cpu', numel)),
 *        0, size, stride, False, OrderedDict())), ...]) with its _metadata
 *        state (BUILD), or (ck.plain_dict) a plain dict as in sd-v1-4.ckpt,
 *    'callbacks': {ModelCheckpoint: {'monitor': None, 'best_model_score':
 *        numpy scalar(dtype('f8'), _codecs.encode('...', 'latin1'))}}}
 * (ck.nested) or the bare OrderedDict. Hooks let a test break one thing:
 * a tensor's stride, a storage's length, or the whole pickle (raw bytes).
 * Needs stdio, stdlib, string, zlib.h and safetensors.h first.
 */
#ifndef LDM_CKPTWRITE_H
#define LDM_CKPTWRITE_H

#include <zlib.h>

typedef struct CkBuf {
    uint8_t *p;
    size_t n, cap;
} CkBuf;

static inline void ckb_put(CkBuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static inline void ckb_u8(CkBuf *b, unsigned v) { uint8_t x = (uint8_t)v; ckb_put(b, &x, 1); }
static inline void ckb_u16(CkBuf *b, unsigned v) { ckb_u8(b, v & 0xff); ckb_u8(b, (v >> 8) & 0xff); }
static inline void ckb_u32(CkBuf *b, uint32_t v) { ckb_u16(b, v & 0xffff); ckb_u16(b, v >> 16); }
static inline void ckb_u64(CkBuf *b, uint64_t v) { ckb_u32(b, (uint32_t)v); ckb_u32(b, (uint32_t)(v >> 32)); }

/* ---- pickle ------------------------------------------------------------ */

typedef struct CkPickle {
    CkBuf b;
    uint32_t next_memo;
    /* memo indices of the repeated strings and globals (0: not yet) */
    uint32_t m_storage, m_cpu, m_rebuild, m_odict, m_stype[10];
} CkPickle;

static inline void ckp_put(CkPickle *k) {
    uint32_t i = k->next_memo++;
    if (i < 256) ckb_u8(&k->b, 'q'), ckb_u8(&k->b, i);
    else ckb_u8(&k->b, 'r'), ckb_u32(&k->b, i);
}
static inline void ckp_get(CkPickle *k, uint32_t i) {
    if (i < 256) ckb_u8(&k->b, 'h'), ckb_u8(&k->b, i);
    else ckb_u8(&k->b, 'j'), ckb_u32(&k->b, i);
}
/* BINUNICODE + BINPUT */
static inline void ckp_str(CkPickle *k, const char *s) {
    ckb_u8(&k->b, 'X');
    ckb_u32(&k->b, (uint32_t)strlen(s));
    ckb_put(&k->b, s, strlen(s));
    ckp_put(k);
}
/* a string memoized once, BINGET after */
static inline void ckp_str_m(CkPickle *k, const char *s, uint32_t *slot) {
    if (*slot) {
        ckp_get(k, *slot - 1);
        return;
    }
    *slot = k->next_memo + 1;
    ckp_str(k, s);
}
static inline void ckp_int(CkPickle *k, int64_t v) {
    if (v >= 0 && v < 256) ckb_u8(&k->b, 'K'), ckb_u8(&k->b, (unsigned)v);
    else if (v >= 0 && v < 65536) ckb_u8(&k->b, 'M'), ckb_u16(&k->b, (unsigned)v);
    else if (v >= INT32_MIN && v <= INT32_MAX) ckb_u8(&k->b, 'J'), ckb_u32(&k->b, (uint32_t)(int32_t)v);
    else {
        ckb_u8(&k->b, 0x8a);
        ckb_u8(&k->b, 8);
        ckb_u64(&k->b, (uint64_t)v);
    }
}
/* GLOBAL + BINPUT, BINGET once memoized (slot NULL: always written) */
static inline void ckp_global(CkPickle *k, const char *mod, const char *name, uint32_t *slot) {
    if (slot && *slot) {
        ckp_get(k, *slot - 1);
        return;
    }
    ckb_u8(&k->b, 'c');
    ckb_put(&k->b, mod, strlen(mod));
    ckb_u8(&k->b, '\n');
    ckb_put(&k->b, name, strlen(name));
    ckb_u8(&k->b, '\n');
    if (slot) *slot = k->next_memo + 1;
    ckp_put(k);
}
/* a tuple of ints as Python writes it: EMPTY_TUPLE, TUPLE1..3, or MARK ... TUPLE */
static inline void ckp_int_tuple(CkPickle *k, int n, const int64_t *v) {
    if (n == 0) {
        ckb_u8(&k->b, ')');
        return;
    }
    if (n > 3) ckb_u8(&k->b, '(');
    for (int i = 0; i < n; i++) ckp_int(k, v[i]);
    ckb_u8(&k->b, n == 1 ? 0x85 : n == 2 ? 0x86 : n == 3 ? 0x87 : 't');
    ckp_put(k);
}
/* OrderedDict() */
static inline void ckp_odict(CkPickle *k) {
    ckp_global(k, "collections", "OrderedDict", &k->m_odict);
    ckb_u8(&k->b, ')');
    ckb_u8(&k->b, 'R');
    ckp_put(k);
}

/* ---- the checkpoint ------------------------------------------------------ */

typedef struct CkTensor {
    const char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;            /* numel * element size bytes */
} CkTensor;

typedef struct CkOpts {
    const char *dir;             /* top directory (default "archive") */
    int zip64;                   /* torch's layout: zip64 extras and end records */
    int deflate;                 /* deflate the storage members */
    int nested;                  /* a Lightning checkpoint dict around the state dict */
    int plain_dict;              /* the state dict a dict, not an OrderedDict (as in sd-v1-4.ckpt) */
    int bad_stride;              /* tensor 0 (2-D or more) written with its first two strides swapped */
    int short_storage;           /* tensor 0's storage member one element short */
    const uint8_t *raw_pickle;   /* data.pkl's bytes instead of the generated pickle */
    size_t raw_len;
    int embedding_pt;            /* instead: the webui's textual-inversion .pt, tensor 0 as the vectors:
                                    {'string_to_token': {'*': 265}, 'string_to_param': {'*': t0},
                                     'name': t0's name, 'step': 100} */
} CkOpts;

static inline const char *ck_storage_type(StDtype d) {
    switch (d) {
    case ST_F32: return "FloatStorage";
    case ST_F16: return "HalfStorage";
    case ST_BF16: return "BFloat16Storage";
    case ST_F64: return "DoubleStorage";
    case ST_I64: return "LongStorage";
    case ST_I32: return "IntStorage";
    case ST_I16: return "ShortStorage";
    case ST_I8: return "CharStorage";
    case ST_U8: return "ByteStorage";
    default: return "BoolStorage";
    }
}

static inline void ck_pickle_tensor(CkPickle *k, const CkTensor *t, int idx, const CkOpts *o) {
    int64_t numel = 1, stride[ST_MAX_DIMS];
    for (int d = t->ndim - 1; d >= 0; d--) stride[d] = numel, numel *= t->shape[d];
    if (idx == 0 && o->bad_stride && t->ndim >= 2) {
        int64_t s = stride[0];
        stride[0] = stride[1], stride[1] = s;
    }
    char key[32];
    snprintf(key, sizeof key, "%d", idx);
    ckp_global(k, "torch._utils", "_rebuild_tensor_v2", &k->m_rebuild);
    ckb_u8(&k->b, '('); /* the argument tuple */
    ckb_u8(&k->b, '('); /* the persistent id */
    ckp_str_m(k, "storage", &k->m_storage);
    ckp_global(k, "torch", ck_storage_type(t->dtype), &k->m_stype[t->dtype]);
    ckp_str(k, key);
    ckp_str_m(k, "cpu", &k->m_cpu);
    ckp_int(k, numel);
    ckb_u8(&k->b, 't');
    ckp_put(k);
    ckb_u8(&k->b, 'Q'); /* BINPERSID */
    ckp_int(k, 0);      /* storage offset */
    ckp_int_tuple(k, t->ndim, t->shape);
    ckp_int_tuple(k, t->ndim, stride);
    ckb_u8(&k->b, 0x89); /* requires_grad False */
    ckp_odict(k);        /* backward hooks */
    ckb_u8(&k->b, 't');
    ckp_put(k);
    ckb_u8(&k->b, 'R');
    ckp_put(k);
}

/* The pickle of the checkpoint dict (malloc'd bytes in *b). */
static inline void ck_pickle(CkBuf *out, const CkTensor *t, int n, const CkOpts *o) {
    CkPickle k;
    memset(&k, 0, sizeof k);
    ckb_u8(&k.b, 0x80);
    ckb_u8(&k.b, 2);
    if (o->embedding_pt) {
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckb_u8(&k.b, '(');
        ckp_str(&k, "string_to_token");
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckp_str(&k, "*");
        ckp_int(&k, 265);
        ckb_u8(&k.b, 's');
        ckp_str(&k, "string_to_param");
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckp_str(&k, "*");
        ck_pickle_tensor(&k, &t[0], 0, o);
        ckb_u8(&k.b, 's');
        ckp_str(&k, "name");
        ckp_str(&k, t[0].name);
        ckp_str(&k, "step");
        ckp_int(&k, 100);
        ckb_u8(&k.b, 'u');
        ckb_u8(&k.b, '.');
        *out = k.b;
        (void)n;
        return;
    }
    if (o->nested) {
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckb_u8(&k.b, '(');
        ckp_str(&k, "epoch");
        ckp_int(&k, 6);
        ckp_str(&k, "global_step");
        ckp_int(&k, 470000);
        ckp_str(&k, "pytorch-lightning_version");
        ckp_str(&k, "1.4.2");
        ckp_str(&k, "state_dict");
    }
    /* the state dict: an OrderedDict, or (plain_dict) a dict as sd-v1-4.ckpt
     * has it; items in batches of 1000 (pickle's BATCHSIZE) */
    if (o->plain_dict) {
        ckb_u8(&k.b, '}');
        ckp_put(&k);
    } else {
        ckp_odict(&k);
    }
    for (int i = 0; i < n; i += 1000) {
        int m = n - i < 1000 ? n - i : 1000;
        if (m > 1) ckb_u8(&k.b, '(');
        for (int j = i; j < i + m; j++) {
            ckp_str(&k, t[j].name);
            ck_pickle_tensor(&k, &t[j], j, o);
        }
        ckb_u8(&k.b, m > 1 ? 'u' : 's');
    }
    /* an OrderedDict's state: {'_metadata': OrderedDict([('', {'version': 1})])} */
    if (!o->plain_dict) {
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckp_str(&k, "_metadata");
        ckp_odict(&k);
        ckp_str(&k, "");
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckp_str(&k, "version");
        ckp_int(&k, 1);
        ckb_u8(&k.b, 's');
        ckb_u8(&k.b, 's');
        ckb_u8(&k.b, 's');
        ckb_u8(&k.b, 'b');
    }
    if (o->nested) {
        ckp_str(&k, "callbacks");
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckp_global(&k, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", NULL);
        ckb_u8(&k.b, '}');
        ckp_put(&k);
        ckb_u8(&k.b, '(');
        ckp_str(&k, "monitor");
        ckb_u8(&k.b, 'N');
        ckp_str(&k, "best_model_score");
        /* numpy.core.multiarray.scalar(numpy.dtype('f8', False, True) + state, _codecs.encode(s, 'latin1')) */
        ckp_global(&k, "numpy.core.multiarray", "scalar", NULL);
        ckp_global(&k, "numpy", "dtype", NULL);
        ckp_str(&k, "f8");
        ckb_u8(&k.b, 0x89);
        ckb_u8(&k.b, 0x88);
        ckb_u8(&k.b, 0x87);
        ckp_put(&k);
        ckb_u8(&k.b, 'R');
        ckp_put(&k);
        ckb_u8(&k.b, '(');
        ckp_int(&k, 3);
        ckp_str(&k, "<");
        ckb_u8(&k.b, 'N');
        ckb_u8(&k.b, 'N');
        ckb_u8(&k.b, 'N');
        ckp_int(&k, -1);
        ckp_int(&k, -1);
        ckp_int(&k, 0);
        ckb_u8(&k.b, 't');
        ckp_put(&k);
        ckb_u8(&k.b, 'b');
        ckp_global(&k, "_codecs", "encode", NULL); /* 0.1 as latin-1 text, UTF-8 encoded */
        ckp_str(&k, "\xc2\x9a\xc2\x99\xc2\x99\xc2\x99\xc2\x99\xc2\x99\xc2\xb9?");
        ckp_str(&k, "latin1");
        ckb_u8(&k.b, 0x86);
        ckp_put(&k);
        ckb_u8(&k.b, 'R');
        ckp_put(&k);
        ckb_u8(&k.b, 0x86);
        ckp_put(&k);
        ckb_u8(&k.b, 'R');
        ckp_put(&k);
        ckb_u8(&k.b, 'u');
        ckb_u8(&k.b, 's');
        ckb_u8(&k.b, 'u'); /* the top dict's items */
    }
    ckb_u8(&k.b, '.');
    *out = k.b;
}

/* ---- the zip ---------------------------------------------------------- */

typedef struct CkMember {
    char *name;
    uint64_t off, csize, usize;
    uint32_t crc;
    int method;
} CkMember;

static inline void ck_member(CkBuf *z, CkMember *m, const char *name, const void *data, size_t n, int compress,
                             int zip64) {
    m->name = strdup(name);
    m->off = z->n;
    m->usize = n;
    m->crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), data, (uInt)n);
    const void *payload = data;
    uint8_t *comp = NULL;
    size_t cn = n;
    if (compress) {
        z_stream zs;
        memset(&zs, 0, sizeof zs);
        if (deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) abort();
        size_t cap = deflateBound(&zs, n) + 16;
        comp = malloc(cap);
        zs.next_in = (Bytef *)data;
        zs.avail_in = (uInt)n;
        zs.next_out = comp;
        zs.avail_out = (uInt)cap;
        if (deflate(&zs, Z_FINISH) != Z_STREAM_END) abort();
        cn = zs.total_out;
        deflateEnd(&zs);
        payload = comp;
    }
    m->csize = cn;
    m->method = compress ? 8 : 0;
    size_t nl = strlen(name);
    size_t x64 = zip64 ? 20 : 0;
    /* "FB" padding so that the data starts at a multiple of 64 */
    size_t base = z->n + 30 + nl + x64 + 4, pad = (64 - base % 64) % 64;
    ckb_u32(z, 0x04034b50);
    ckb_u16(z, zip64 ? 45 : 20);
    ckb_u16(z, 0);
    ckb_u16(z, (unsigned)m->method);
    ckb_u16(z, 0);
    ckb_u16(z, 0x21);
    ckb_u32(z, m->crc);
    ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)cn);
    ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)n);
    ckb_u16(z, (unsigned)nl);
    ckb_u16(z, (unsigned)(x64 + 4 + pad));
    ckb_put(z, name, nl);
    if (zip64) {
        ckb_u16(z, 1);
        ckb_u16(z, 16);
        ckb_u64(z, n);
        ckb_u64(z, cn);
    }
    ckb_u16(z, 0x4246); /* "FB" */
    ckb_u16(z, (unsigned)pad);
    for (size_t i = 0; i < pad; i++) ckb_u8(z, 'Z');
    ckb_put(z, payload, cn);
    free(comp);
}

static inline void ck_central(CkBuf *z, const CkMember *ms, int nm, int zip64) {
    uint64_t cd_off = z->n;
    for (int i = 0; i < nm; i++) {
        const CkMember *m = &ms[i];
        size_t nl = strlen(m->name);
        ckb_u32(z, 0x02014b50);
        ckb_u16(z, zip64 ? 45 : 20);
        ckb_u16(z, zip64 ? 45 : 20);
        ckb_u16(z, 0);
        ckb_u16(z, (unsigned)m->method);
        ckb_u16(z, 0);
        ckb_u16(z, 0x21);
        ckb_u32(z, m->crc);
        ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)m->csize);
        ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)m->usize);
        ckb_u16(z, (unsigned)nl);
        ckb_u16(z, zip64 ? 28 : 0);
        ckb_u16(z, 0);
        ckb_u16(z, 0);
        ckb_u16(z, 0);
        ckb_u32(z, 0);
        ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)m->off);
        ckb_put(z, m->name, nl);
        if (zip64) {
            ckb_u16(z, 1);
            ckb_u16(z, 24);
            ckb_u64(z, m->usize);
            ckb_u64(z, m->csize);
            ckb_u64(z, m->off);
        }
    }
    uint64_t cd_size = z->n - cd_off;
    if (zip64) {
        uint64_t r = z->n;
        ckb_u32(z, 0x06064b50);
        ckb_u64(z, 44);
        ckb_u16(z, 45);
        ckb_u16(z, 45);
        ckb_u32(z, 0);
        ckb_u32(z, 0);
        ckb_u64(z, (uint64_t)nm);
        ckb_u64(z, (uint64_t)nm);
        ckb_u64(z, cd_size);
        ckb_u64(z, cd_off);
        ckb_u32(z, 0x07064b50);
        ckb_u32(z, 0);
        ckb_u64(z, r);
        ckb_u32(z, 1);
    }
    ckb_u32(z, 0x06054b50);
    ckb_u16(z, 0);
    ckb_u16(z, 0);
    ckb_u16(z, zip64 ? 0xFFFF : (unsigned)nm);
    ckb_u16(z, zip64 ? 0xFFFF : (unsigned)nm);
    ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)cd_size);
    ckb_u32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)cd_off);
    ckb_u16(z, 0);
}

/* The whole .ckpt in memory (*out, malloc'd). */
static inline void ck_build(CkBuf *out, const CkTensor *t, int n, const CkOpts *o) {
    const char *dir = o->dir ? o->dir : "archive";
    CkBuf pk = {0};
    if (o->raw_pickle) ckb_put(&pk, o->raw_pickle, o->raw_len);
    else ck_pickle(&pk, t, n, o);
    CkBuf z = {0};
    CkMember *ms = calloc((size_t)n + 4, sizeof *ms);
    int nm = 0;
    char name[512];
    snprintf(name, sizeof name, "%s/data.pkl", dir);
    ck_member(&z, &ms[nm++], name, pk.p, pk.n, 0, o->zip64);
    snprintf(name, sizeof name, "%s/byteorder", dir);
    ck_member(&z, &ms[nm++], name, "little", 6, 0, o->zip64);
    for (int i = 0; i < n; i++) {
        size_t bytes = st_dtype_size(t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++) bytes *= (size_t)t[i].shape[d];
        if (i == 0 && o->short_storage && bytes) bytes -= st_dtype_size(t[i].dtype);
        snprintf(name, sizeof name, "%s/data/%d", dir, i);
        ck_member(&z, &ms[nm++], name, t[i].data, bytes, o->deflate, o->zip64);
    }
    snprintf(name, sizeof name, "%s/version", dir);
    ck_member(&z, &ms[nm++], name, "3\n", 2, 0, o->zip64);
    ck_central(&z, ms, nm, o->zip64);
    for (int i = 0; i < nm; i++) free(ms[i].name);
    free(ms);
    free(pk.p);
    *out = z;
}

/* Write a .ckpt of the tensors to path: 0, or -1 (errno). */
static inline int ck_write(const char *path, const CkTensor *t, int n, const CkOpts *o) {
    CkBuf z;
    ck_build(&z, t, n, o);
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(z.p, 1, z.n, fp) == z.n;
    if (fp && fclose(fp) != 0) ok = 0;
    free(z.p);
    return ok ? 0 : -1;
}

/* The tensors of an open file as CkTensors (malloc'd; pointing into f). */
static inline CkTensor *ck_from_file(const StFile *f) {
    CkTensor *t = calloc((size_t)f->n_tensors + 1, sizeof *t);
    for (int i = 0; i < f->n_tensors; i++) {
        const StTensor *s = &f->tensors[i];
        t[i].name = s->name;
        t[i].dtype = s->dtype;
        t[i].ndim = s->ndim;
        memcpy(t[i].shape, s->shape, sizeof t[i].shape);
        t[i].data = s->data;
    }
    return t;
}

#endif
