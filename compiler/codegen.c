/*
 * codegen.c - C code generation.
 *
 * One self-contained C file per graph. Every node becomes one static
 * kernel function named after its node id and op (n42_conv2d), with a
 * comment naming the DSL source line, the weight scope, the shapes and the
 * arena offsets; every shape and trip count is a literal. Large contractions
 * (convolutions through im2col, linear layers, attention products) call
 * cblas_sgemm; everything else is an emitted loop, parallelised with OpenMP
 * where the loop is large. The entry function calls the kernels in
 * schedule order on buffers at fixed arena offsets.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "ldmc.h"

#define E(...) fprintf(fp, __VA_ARGS__)

/* Loops with fewer iterations than this run on one thread. */
#define PAR_MIN 32768

/* ---- kernel choices that decide scratch sizes ---------------------------- */

static LdmConvShape conv_shape(const Node *n) {
    const Node *x = n->src[0], *w = n->src[1];
    LdmConvShape s = {(int)x->shape[0], (int)x->shape[1], (int)x->shape[2], (int)x->shape[3], (int)w->shape[0],
                      (int)w->shape[2], (int)w->shape[3], n->stride[0], n->stride[1], n->pad[0], n->pad[1], n->pad[2],
                      n->pad[3], (int)n->shape[2], (int)n->shape[3], (long)n->out_gap};
    return s;
}

static LdmAttnShape attn_shape(const Node *n);

/* The rows of linear+geglu's product before gating are padded by 16
 * floats: rows of 2560 or 10240 floats (SD's feed-forward widths) are a
 * multiple of 4 KB apart and would all fall into the same cache sets. */
static int64_t geglu_ld(int64_t O) { return O + 16; }

/* linear+geglu runs in blocks of rows, so the product before gating (twice
 * the result) needs a scratch of about 32 MB instead of the whole product
 * (80 MB in SD's UNet at 512x512). Every block packs the whole weight again
 * (the GEMM's B), so the blocks are not smaller: with 8 MB blocks the
 * 512x512 UNet's feed-forward layers ran 4-8% slower (11 blocks of up to
 * 816 rows for 8192 rows, 6 of 408 for 2048, 3 of 200 for 512; now 3, 2
 * and 1); at 256x256 they now run in one block. */
static int64_t geglu_rows(int64_t M, int64_t O) {
    int64_t r = ((int64_t)8 << 20) / (O > 0 ? O : 1);
    r = r < 64 ? 64 : r & ~(int64_t)7;
    return r < M ? r : M;
}

int64_t kernel_scratch_bytes(const Node *n) {
    switch (n->op) {
    case OPK_CONV2D: {
        LdmConvShape s = conv_shape(n);
        return (int64_t)ldm_conv_scratch_bytes(&s, n->algo);
    }
    case OPK_LINEAR: {
        /* linear+geglu: a block of rows of the product before gating;
         * layer_norm+linear: the mean and 1/std of every input row */
        int64_t O = n->src[1]->shape[0], M = node_numel(n->src[0]) / n->src[1]->shape[1];
        return (n->act == ACT_GEGLU ? 4 * geglu_rows(M, O) * geglu_ld(O) : 0) + (n->pro_lnorm ? 8 * M : 0);
    }
    case OPK_ATTENTION: {
        LdmAttnShape a = attn_shape(n);
        return (int64_t)ldm_attention_scratch_bytes(&a);
    }
    default: return 0;
    }
}

/* ---- helpers -------------------------------------------------------------- */

/* A float constant as a C literal: 2 -> "2.0f", 0.37 -> "0.370000005f". */
static const char *flit(double v, char *buf, size_t size) {
    snprintf(buf, size, "%.9g", v);
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", size - strlen(buf) - 1);
    strncat(buf, "f", size - strlen(buf) - 1);
    return buf;
}

static const char *ctype(DType d) { return d == DT_I32 ? "int32_t" : "float"; }

static int64_t prod(const int64_t *s, int from, int to) {
    int64_t k = 1;
    for (int i = from; i < to; i++) k *= s[i];
    return k;
}

static const char *key_of(const Graph *g, const Node *w) {
    size_t n = strlen(g->prefix);
    return strncmp(w->name, g->prefix, n) == 0 ? w->name + n : w->name;
}

static void par(FILE *fp, int64_t iters, const char *indent) {
    if (iters >= PAR_MIN) E("%s#pragma omp parallel for\n", indent);
}

/* The weight behind a value (through reshape views), or NULL. */
static const Node *weight_of(const Node *n) {
    while (n->op == OPK_RESHAPE) n = n->src[0];
    return n->op == OPK_WEIGHT ? n : NULL;
}

/* The comment block above a kernel: where it comes from and what it does. */
static void kernel_header(const Graph *g, const Node *n, FILE *fp) {
    char b[128], kn[64];
    E("\n/*\n * %%%d %s", n->id, node_kernel_name(n, kn, sizeof kn));
    if (n->loc.file) E("  (%s:%d", n->loc.file->path, n->loc.line);
    else E("  (<builtin>");
    if (n->scope) E(", scope %s", n->scope);
    E(")\n");
    if (n->fused) E(" *   fuses %s\n", n->fused);
    for (int s = 0; s < n->nsrc; s++) {
        const Node *x = n->src[s], *w = weight_of(x);
        if (w) E(" *   in  %s %s\n", key_of(g, w), shape_str(x, b, sizeof b));
        else E(" *   in  %%%d %s %s\n", x->id, op_names[x->op], shape_str(x, b, sizeof b));
    }
    E(" *   out %s%s", n->dtype == DT_I32 ? "i32" : "f32", shape_str(n, b, sizeof b));
    if (n->storage == n) E(" at arena+%lld", (long long)n->offset);
    else if (n->op != OPK_RESHAPE)
        E(" written straight into %%%d at arena+%lld (samples %lld floats apart)", n->storage->id,
          (long long)(n->storage->offset + n->into_offset), (long long)(node_numel(n) / n->shape[0] + n->out_gap));
    if (n->scratch_bytes) E("; scratch %lld bytes at arena+%lld", (long long)n->scratch_bytes, (long long)n->scratch_offset);
    E("\n */\n");
}

/* ---- kernels --------------------------------------------------------------- */

/* Parameter list of a kernel: one per source (weights in half-capable
 * slots as LdmW, everything else as float or int pointers), then y. */
static int src_is_lw(const Node *n, int s) {
    const Node *w = n->src[s];
    while (w->op == OPK_RESHAPE) w = w->src[0];
    return w->op == OPK_WEIGHT && ((s == 1 && (n->op == OPK_CONV2D || n->op == OPK_LINEAR)) || (s == 0 && n->op == OPK_EMBEDDING));
}

static void emit_params(const Node *n, FILE *fp, const char *const *names) {
    for (int s = 0; s < n->nsrc; s++) {
        if (src_is_lw(n, s)) E("LdmW %s, ", names[s]);
        else E("const %s *restrict %s, ", ctype(n->src[s]->dtype), names[s]);
    }
    E("%s *restrict y", ctype(n->dtype));
    if (n->scratch_bytes) E(", float *restrict scratch");
    E(")");
}

/* Names of the sources of conv2d/linear: x, w, then bias/rowadd/residual. */
static void gemm_src_names(const Node *n, const char **names) {
    names[0] = "x";
    names[1] = "w";
    for (int s = 2; s < n->nsrc; s++)
        names[s] = s + 1 == n->ep_rowadd      ? "rowadd"
                   : s + 1 == n->ep_residual  ? "residual"
                   : s + 1 == n->pro_lnorm    ? "ln_w"
                   : s == n->pro_lnorm        ? "ln_b"
                                              : "b";
}

/* C identifier of a fused kernel: "conv2d_rowadd_residual". */
static const char *kernel_ident(const Node *n, char *buf, size_t size) {
    node_kernel_name(n, buf, size);
    for (char *p = buf; *p; p++)
        if (*p == '+') *p = '_';
    return buf;
}

static void k_conv2d(const Node *n, FILE *fp) {
    const char *names[MAX_SRC];
    char kn[64];
    gemm_src_names(n, names);
    LdmConvShape c = conv_shape(n);
    static const char *algos[] = {"LDM_CONV_IM2COL", "LDM_CONV_POINTWISE", "LDM_CONV_WINOGRAD", "LDM_CONV_DIRECT"};
    E("static void n%d_%s(", n->id, kernel_ident(n, kn, sizeof kn));
    emit_params(n, fp, names);
    E(" {\n");
    E("    /* N C H W, O KH KW, stride h w, pad t b l r, HO WO */\n");
    if (n->out_gap) E("    /* y is this node's part of a concatenation: %lld floats between samples */\n", (long long)n->out_gap);
    E("    static const LdmConvShape s = {%d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %lld};\n", c.N, c.C,
      c.H, c.W, c.O, c.KH, c.KW, c.stride_h, c.stride_w, c.pad_t, c.pad_b, c.pad_l, c.pad_r, c.HO, c.WO,
      (long long)n->out_gap);
    int has_b = 0;
    for (int s = 2; s < n->nsrc; s++) has_b |= !strcmp(names[s], "b");
    E("    const LdmEpilogue ep = {%s, %s, %s};\n", has_b ? "b" : "NULL", n->ep_rowadd ? "rowadd" : "NULL",
      n->ep_residual ? "residual" : "NULL");
    E("    ldm_conv2d(&s, %s, x, w, &ep, y, %s);\n", algos[n->algo], n->scratch_bytes ? "scratch" : "NULL");
    E("}\n");
}

static void k_linear(const Node *n, FILE *fp) {
    const char *names[MAX_SRC];
    char kn[64];
    gemm_src_names(n, names);
    const Node *w = n->src[1];
    int64_t O = w->shape[0], I = w->shape[1], M = node_numel(n->src[0]) / I;
    int has_b = 0;
    for (int s = 2; s < n->nsrc; s++) has_b |= !strcmp(names[s], "b");
    /* the GEMM accumulates onto bias and residual, except under GEGLU, whose
     * pass over the product adds the bias (no residual there: fuse.c) */
    const int geglu = n->act == ACT_GEGLU, acc = !geglu && (has_b || n->ep_residual);
    const int64_t R = geglu ? geglu_rows(M, O) : M; /* rows per block */
    E("static void n%d_%s(", n->id, kernel_ident(n, kn, sizeof kn));
    emit_params(n, fp, names);
    E(" {\n");
    E("    /* %s[%lld, %lld] = %sx[%lld, %lld] w[%lld, %lld]^T%s%s%s */\n", geglu ? "p" : "y", (long long)M, (long long)O,
      n->pro_lnorm ? "layer_norm(x) with " : "", (long long)M, (long long)I, (long long)O, (long long)I,
      has_b ? " + b" : "", n->ep_residual ? " + residual" : "",
      geglu ? "; y = geglu(p), in blocks of rows (p in scratch)" : "");
    E("    enum { M_ = %lld, O_ = %lld, I_ = %lld, R_ = %lld, LD_ = %lld /* row stride of %s */ };\n", (long long)M,
      (long long)O, (long long)I, (long long)R, (long long)(geglu ? geglu_ld(O) : O), geglu ? "p" : "y");
    if (n->pro_lnorm) {
        E("    /* layer_norm (eps %g) fused: statistics of the rows of x, which the GEMM normalises as it packs them */\n",
          n->eps);
        E("    float *mean = scratch + %lld, *rstd = mean + M_;\n", (long long)(geglu ? R * geglu_ld(O) : 0));
        E("    ldm_row_stats(M_, I_, x, %.17g, mean, rstd);\n", n->eps);
    }
    E("    for (int m0 = 0; m0 < M_; m0 += R_) {\n");
    E("        const int rows = M_ - m0 < R_ ? M_ - m0 : R_;\n");
    E("        float *dst = %s;\n", geglu ? "scratch" : "y + (size_t)m0 * O_");
    if (acc) {
        char rhs[128];
        snprintf(rhs, sizeof rhs, "%s%s%s", has_b ? "b[o]" : "", has_b && n->ep_residual ? " + " : "",
                 n->ep_residual ? "residual[(size_t)(m0 + m) * O_ + o]" : "");
        E("        /* the GEMM accumulates onto the epilogue */\n");
        par(fp, R * O, "        ");
        E("        for (int m = 0; m < rows; m++)\n");
        E("            for (int o = 0; o < O_; o++) dst[(size_t)m * LD_ + o] = %s;\n", rhs);
    }
    if (n->pro_lnorm) E("        const LdmRowNorm ln = {mean + m0, rstd + m0, ln_w, ln_b};\n");
    E("        ldm_gemm_norm(rows, O_, I_, x + (size_t)m0 * I_, I_, %s, w, 0, I_, 1, dst, LD_, %d);\n",
      n->pro_lnorm ? "&ln" : "NULL", acc);
    if (geglu)
        E("        /* geglu: y = a * gelu(g), a = first %lld features (value), g = last %lld (gate), erf GELU */\n"
          "        ldm_geglu(rows, O_ / 2, scratch, LD_, %s, y + (size_t)m0 * (O_ / 2));\n",
          (long long)(O / 2), (long long)(O / 2), has_b ? "b" : "NULL");
    E("    }\n}\n");
}

static void k_matmul(const Node *n, FILE *fp) {
    const Node *a = n->src[0], *b = n->src[1];
    int r = n->ndim;
    int64_t Bt = prod(n->shape, 0, r - 2), M = n->shape[r - 2], N = n->shape[r - 1], K = a->shape[r - 1];
    int64_t ldb = b->shape[r - 1];
    E("static void n%d_matmul(const float *restrict a, const float *restrict b, float *restrict y) {\n", n->id);
    E("    for (int i = 0; i < %lld; i++)\n", (long long)Bt);
    E("        cblas_sgemm(CblasRowMajor, CblasNoTrans, %s, %lld, %lld, %lld, 1.0f, a + (size_t)i * %lld, %lld, "
      "b + (size_t)i * %lld, %lld, 0.0f, y + (size_t)i * %lld, %lld);\n",
      n->trans_b ? "CblasTrans" : "CblasNoTrans", (long long)M, (long long)N, (long long)K, (long long)(M * K),
      (long long)K, (long long)(K * (n->trans_b ? N : N)), (long long)ldb, (long long)(M * N), (long long)N);
    E("}\n");
}

static void k_group_norm(const Node *n, FILE *fp) {
    int64_t N = n->shape[0], C = n->shape[1], S = prod(n->shape, 2, n->ndim), G = n->groups;
    E("static void n%d_group_norm%s(const float *restrict x, const float *restrict w, const float *restrict b, float *restrict y) {\n",
      n->id, n->act == ACT_SILU ? "_silu" : "");
    E("    /* %lld samples x %lld groups of %lld channels x %lld positions, eps %g%s */\n", (long long)N, (long long)G,
      (long long)(C / G), (long long)S, n->eps, n->act == ACT_SILU ? ", then SiLU (fused)" : "");
    E("    ldm_group_norm(%lld, %lld, %lld, %lld, %.17g, x, w, b, y, %d);\n}\n", (long long)N, (long long)C, (long long)S,
      (long long)G, n->eps, n->act == ACT_SILU);
}

static void k_layer_norm(const Node *n, FILE *fp) {
    int64_t D = n->shape[n->ndim - 1], M = node_numel(n) / D;
    E("static void n%d_layer_norm(const float *restrict x, const float *restrict w, const float *restrict b, float *restrict y) {\n", n->id);
    par(fp, M * D, "    ");
    E("    for (int m = 0; m < %lld; m++) {\n", (long long)M);
    E("        const float *xr = x + (size_t)m * %lld;\n", (long long)D);
    E("        float *yr = y + (size_t)m * %lld;\n", (long long)D);
    E("        double sum = 0.0, sq = 0.0;\n");
    E("        for (int i = 0; i < %lld; i++) sum += xr[i];\n", (long long)D);
    E("        const double mean = sum / %lld.0;\n", (long long)D);
    E("        for (int i = 0; i < %lld; i++) { const double d = xr[i] - mean; sq += d * d; }\n", (long long)D);
    E("        const double rstd = 1.0 / sqrt(sq / %lld.0 + %.17g);\n", (long long)D, n->eps);
    E("        for (int i = 0; i < %lld; i++) yr[i] = (float)((xr[i] - mean) * rstd) * w[i] + b[i];\n", (long long)D);
    E("    }\n}\n");
}

static void k_unary(const Node *n, FILE *fp) {
    int64_t T = node_numel(n);
    const char *expr = "";
    switch (n->op) {
    case OPK_SILU: expr = "v / (1.0f + expf(-v))"; break;
    case OPK_GELU: expr = "0.5f * v * (1.0f + erff(v * 0.70710678118654752f))"; break;
    case OPK_QUICK_GELU: expr = "v / (1.0f + expf(-1.702f * v))"; break;
    case OPK_SIGMOID: expr = "1.0f / (1.0f + expf(-v))"; break;
    default: break;
    }
    E("static void n%d_%s(const float *restrict x, float *restrict y) {\n", n->id, op_names[n->op]);
    par(fp, T, "    ");
    E("    for (size_t i = 0; i < %lldu; i++) {\n", (long long)T);
    E("        const float v = x[i];\n");
    E("        y[i] = %s;\n", expr);
    E("    }\n}\n");
}

static void k_scale(const Node *n, FILE *fp) {
    int64_t T = node_numel(n);
    char fa[48], fb[48];
    E("static void n%d_scale(const float *restrict x, float *restrict y) {\n", n->id);
    par(fp, T, "    ");
    E("    for (size_t i = 0; i < %lldu; i++) y[i] = x[i] * %s + %s;\n", (long long)T, flit(n->alpha, fa, sizeof fa),
      flit(n->beta, fb, sizeof fb));
    E("}\n");
}

static void k_geglu(const Node *n, FILE *fp) {
    int64_t D = n->shape[n->ndim - 1], M = node_numel(n) / D;
    E("static void n%d_geglu(const float *restrict x, float *restrict y) {\n", n->id);
    E("    /* y = a * gelu(g): a = first %lld channels (value), g = last %lld (gate), exact erf GELU */\n", (long long)D, (long long)D);
    par(fp, M * D, "    ");
    E("    for (int m = 0; m < %lld; m++)\n", (long long)M);
    E("        for (int d = 0; d < %lld; d++) {\n", (long long)D);
    E("            const float a = x[(size_t)m * %lld + d], g = x[(size_t)m * %lld + %lld + d];\n", (long long)(2 * D),
      (long long)(2 * D), (long long)D);
    E("            y[(size_t)m * %lld + d] = a * (0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));\n", (long long)D);
    E("        }\n}\n");
}

static void k_softmax(const Node *n, FILE *fp) {
    int64_t D = n->shape[n->ndim - 1], M = node_numel(n) / D;
    E("static void n%d_softmax(const float *restrict x, float *restrict y) {\n", n->id);
    par(fp, M * D, "    ");
    E("    for (int m = 0; m < %lld; m++) {\n", (long long)M);
    E("        const float *xr = x + (size_t)m * %lld;\n", (long long)D);
    E("        float *yr = y + (size_t)m * %lld;\n", (long long)D);
    E("        float mx = xr[0];\n");
    E("        for (int i = 1; i < %lld; i++) mx = xr[i] > mx ? xr[i] : mx;\n", (long long)D);
    E("        float sum = 0.0f;\n");
    E("        for (int i = 0; i < %lld; i++) { yr[i] = expf(xr[i] - mx); sum += yr[i]; }\n", (long long)D);
    E("        const float inv = 1.0f / sum;\n");
    E("        for (int i = 0; i < %lld; i++) yr[i] *= inv;\n", (long long)D);
    E("    }\n}\n");
}

static LdmAttnShape attn_shape(const Node *n) {
    const Node *q = n->src[0], *k = n->src[1], *v = n->src[2];
    int B = (int)q->shape[0], Tq = (int)q->shape[1], Tk = (int)k->shape[1], C = (int)q->shape[2], Cv = (int)v->shape[2];
    LdmAttnShape s = {B, Tq, Tk, n->heads, C / n->heads, Cv / n->heads, C, C, Cv, Cv, (long)Tq * C, (long)Tk * C,
                      (long)Tk * Cv, (long)Tq * Cv, (float)n->alpha, n->causal};
    return s;
}

static void k_attention(const Node *n, FILE *fp) {
    LdmAttnShape a = attn_shape(n);
    char fa[48];
    E("static void n%d_attention(const float *restrict q, const float *restrict k, const float *restrict v, float *restrict y%s) {\n",
      n->id, n->scratch_bytes ? ", float *restrict scratch" : "");
    E("    /* fused multi-head attention (flash scheme: query tiles x key tiles, online softmax);\n");
    E("     * %d heads of %d (q, k) / %d (v) channels, scale %s%s */\n", a.H, a.d, a.dv, flit(a.scale, fa, sizeof fa),
      a.causal ? ", causal" : "");
    E("    /* B Tq Tk H d dv, ldq ldk ldv ldy, batch strides q k v y, scale, causal */\n");
    E("    static const LdmAttnShape s = {%d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %ld, %ld, %ld, %ld, %s, %d};\n", a.B, a.Tq,
      a.Tk, a.H, a.d, a.dv, a.ldq, a.ldk, a.ldv, a.ldy, a.bsq, a.bsk, a.bsv, a.bsy, flit(a.scale, fa, sizeof fa), a.causal);
    E("    ldm_attention(&s, q, k, v, y, %s);\n", n->scratch_bytes ? "scratch" : "NULL");
    E("}\n");
}

static void k_upsample(const Node *n, FILE *fp) {
    int64_t NC = n->shape[0] * n->shape[1], HO = n->shape[2], WO = n->shape[3], f = n->factor;
    int64_t H = HO / f, W = WO / f;
    E("static void n%d_upsample_nearest(const float *restrict x, float *restrict y) {\n", n->id);
    par(fp, NC * HO * WO, "    ");
    E("    for (int c = 0; c < %lld; c++)\n", (long long)NC);
    E("        for (int oy = 0; oy < %lld; oy++)\n", (long long)HO);
    E("            for (int ox = 0; ox < %lld; ox++)\n", (long long)WO);
    E("                y[((size_t)c * %lld + oy) * %lld + ox] = x[((size_t)c * %lld + oy / %lld) * %lld + ox / %lld];\n",
      (long long)HO, (long long)WO, (long long)H, (long long)f, (long long)W, (long long)f);
    E("}\n");
}

static void k_avgpool(const Node *n, FILE *fp) {
    const Node *x = n->src[0];
    int64_t NC = n->shape[0] * n->shape[1], HO = n->shape[2], WO = n->shape[3], k = n->factor;
    int64_t H = x->shape[2], W = x->shape[3];
    char fk[48];
    E("static void n%d_avg_pool2d(const float *restrict x, float *restrict y) {\n", n->id);
    par(fp, NC * H * W, "    ");
    E("    for (int c = 0; c < %lld; c++)\n", (long long)NC);
    E("        for (int oy = 0; oy < %lld; oy++)\n", (long long)HO);
    E("            for (int ox = 0; ox < %lld; ox++) {\n", (long long)WO);
    E("                float sum = 0.0f;\n");
    E("                for (int dy = 0; dy < %lld; dy++)\n", (long long)k);
    E("                    for (int dx = 0; dx < %lld; dx++)\n", (long long)k);
    E("                        sum += x[((size_t)c * %lld + oy * %lld + dy) * %lld + ox * %lld + dx];\n", (long long)H,
      (long long)k, (long long)W, (long long)k);
    E("                y[((size_t)c * %lld + oy) * %lld + ox] = sum * %s;\n", (long long)HO, (long long)WO,
      flit(1.0 / (double)(k * k), fk, sizeof fk));
    E("            }\n}\n");
}

/* Elementwise binary op with numpy broadcasting: nested loops over the
 * output with per-operand strides (0 along broadcast dimensions). */
static void k_binary(const Node *n, FILE *fp) {
    const Node *a = n->src[0], *b = n->src[1];
    const char *op = n->op == OPK_ADD ? "+" : n->op == OPK_SUB ? "-" : "*";
    int64_t T = node_numel(n);
    E("static void n%d_%s(const float *restrict a, const float *restrict b, float *restrict y) {\n", n->id, op_names[n->op]);
    if (node_numel(a) == T && node_numel(b) == T) {
        par(fp, T, "    ");
        E("    for (size_t i = 0; i < %lldu; i++) y[i] = a[i] %s b[i];\n", (long long)T, op);
        E("}\n");
        return;
    }
    int r = n->ndim;
    int64_t sa[MAX_DIMS], sb[MAX_DIMS];
    int64_t ka = 1, kb = 1;
    for (int i = r - 1; i >= 0; i--) {
        int ia = a->ndim - r + i, ib = b->ndim - r + i;
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        sa[i] = da == 1 ? 0 : ka;
        sb[i] = db == 1 ? 0 : kb;
        ka *= da;
        kb *= db;
    }
    E("    /* broadcast: a strides");
    for (int i = 0; i < r; i++) E(" %lld", (long long)sa[i]);
    E(", b strides");
    for (int i = 0; i < r; i++) E(" %lld", (long long)sb[i]);
    E(" */\n");
    if (r > 1 && n->shape[0] > 1 && T >= PAR_MIN) E("    #pragma omp parallel for\n");
    for (int i = 0; i < r; i++) E("%*sfor (int64_t i%d = 0; i%d < %lld; i%d++)\n", 4 + 4 * i, "", i, i, (long long)n->shape[i], i);
    E("%*s{\n", 4 + 4 * r, "");
    E("%*sconst size_t o = ", 8 + 4 * r, "");
    for (int i = 0; i < r; i++) E("%si%d * %lld", i ? " + " : "", i, (long long)prod(n->shape, i + 1, r));
    E(";\n%*sy[o] = a[", 8 + 4 * r, "");
    int first = 1;
    for (int i = 0; i < r; i++)
        if (sa[i]) { E("%si%d * %lld", first ? "" : " + ", i, (long long)sa[i]); first = 0; }
    if (first) E("0");
    E("] %s b[", op);
    first = 1;
    for (int i = 0; i < r; i++)
        if (sb[i]) { E("%si%d * %lld", first ? "" : " + ", i, (long long)sb[i]); first = 0; }
    if (first) E("0");
    E("];\n%*s}\n}\n", 4 + 4 * r, "");
}

static void k_concat(const Node *n, FILE *fp) {
    int64_t outer = prod(n->shape, 0, n->axis), inner = prod(n->shape, n->axis + 1, n->ndim);
    E("static void n%d_concat(", n->id);
    for (int s = 0; s < n->nsrc; s++) E("const %s *restrict x%d, ", ctype(n->dtype), s);
    E("%s *restrict y) {\n", ctype(n->dtype));
    E("    for (int o = 0; o < %lld; o++) {\n", (long long)outer);
    E("        %s *dst = y + (size_t)o * %lld;\n", ctype(n->dtype), (long long)(n->shape[n->axis] * inner));
    for (int s = 0; s < n->nsrc; s++) {
        int64_t len = n->src[s]->shape[n->axis] * inner;
        if (n->src[s]->storage == n)
            E("        /* x%d: %%%d wrote it in place */\n", s, n->src[s]->id);
        else
            E("        memcpy(dst, x%d + (size_t)o * %lld, %lld * sizeof(*y));\n", s, (long long)len, (long long)len);
        if (s + 1 < n->nsrc) E("        dst += %lld;\n", (long long)len);
    }
    E("    }\n");
    for (int s = 0; s < n->nsrc; s++)
        if (n->src[s]->storage == n) E("    (void)x%d;\n", s);
    E("}\n");
}

static void k_timestep_emb(const Node *n, FILE *fp) {
    int64_t B = n->shape[0], D = n->shape[1], half = D / 2;
    E("static void n%d_timestep_embedding(const float *restrict t, float *restrict y) {\n", n->id);
    E("    /* openaimodel.timestep_embedding: freqs = exp(-ln(%g) * arange(%lld) / %lld) in float32, [cos, sin] */\n",
      n->max_period, (long long)half, (long long)half);
    E("    const float c = (float)(-log(%.17g));\n", n->max_period);
    E("    for (int b = 0; b < %lld; b++)\n", (long long)B);
    E("        for (int i = 0; i < %lld; i++) {\n", (long long)half);
    E("            const float freq = expf(c * (float)i / %lld.0f);\n", (long long)half);
    E("            const float arg = t[b] * freq;\n");
    E("            y[b * %lld + i] = cosf(arg);\n", (long long)D);
    E("            y[b * %lld + %lld + i] = sinf(arg);\n", (long long)D, (long long)half);
    E("        }\n");
    if (D % 2) E("    for (int b = 0; b < %lld; b++) y[b * %lld + %lld] = 0.0f; /* odd dim: zero pad */\n", (long long)B, (long long)D, (long long)(D - 1));
    E("}\n");
}

static void k_embedding(const Node *n, FILE *fp) {
    const Node *table = n->src[0];
    int64_t V = table->shape[0], D = table->shape[1], T = node_numel(n->src[1]);
    E("static int n%d_embedding(LdmW table, const int32_t *restrict ids, float *restrict y) {\n", n->id);
    E("    for (int i = 0; i < %lld; i++) {\n", (long long)T);
    E("        if (ids[i] < 0 || ids[i] >= %lld)\n", (long long)V);
    const Node *ids = n->src[1];
    while (ids->op == OPK_RESHAPE) ids = ids->src[0];
    char what[160];
    if (ids->op == OPK_INPUT) snprintf(what, sizeof what, "input '%s'", ids->name);
    else snprintf(what, sizeof what, "node %%%%%d", ids->id);
    E("            return ldm_fail(\"%s: id %%d at position %%d is outside [0, %lld) (node %%%%%d embedding, %s:%d)\", (int)ids[i], i);\n",
      what, (long long)V, n->id, n->loc.file ? n->loc.file->path : "?", n->loc.line);
    E("        ldm_w_to_f32(table, (size_t)ids[i] * %lld, %lld, y + (size_t)i * %lld);\n", (long long)D, (long long)D, (long long)D);
    E("    }\n    return 0;\n}\n");
}

static void k_permute(const Node *n, FILE *fp) {
    const Node *x = n->src[0];
    int r = n->ndim;
    int64_t xs[MAX_DIMS];
    for (int i = 0; i < r; i++) xs[i] = prod(x->shape, i + 1, r);
    E("static void n%d_permute(const %s *restrict x, %s *restrict y) {\n", n->id, ctype(n->dtype), ctype(n->dtype));
    if (r == 3 && n->perm[0] == 0 && n->perm[1] == 2 && n->perm[2] == 1 && n->dtype == DT_F32) {
        /* feature maps to tokens or back: the blocked transpose */
        E("    ldm_transpose(%lld, %lld, %lld, x, y);\n}\n", (long long)x->shape[0], (long long)x->shape[1],
          (long long)x->shape[2]);
        return;
    }
    if (r > 1 && n->shape[0] > 1 && node_numel(n) >= PAR_MIN) E("    #pragma omp parallel for\n");
    for (int i = 0; i < r; i++) E("%*sfor (int64_t i%d = 0; i%d < %lld; i%d++)\n", 4 + 4 * i, "", i, i, (long long)n->shape[i], i);
    E("%*sy[", 4 + 4 * r, "");
    for (int i = 0; i < r; i++) E("%si%d * %lld", i ? " + " : "", i, (long long)prod(n->shape, i + 1, r));
    E("] = x[");
    for (int i = 0; i < r; i++) E("%si%d * %lld", i ? " + " : "", i, (long long)xs[n->perm[i]]);
    E("];\n}\n");
}

static void k_slice(const Node *n, FILE *fp) {
    const Node *x = n->src[0];
    int64_t outer = prod(n->shape, 0, n->axis), inner = prod(n->shape, n->axis + 1, n->ndim);
    int64_t len = (n->end - n->start) * inner, xrow = x->shape[n->axis] * inner;
    E("static void n%d_slice(const %s *restrict x, %s *restrict y) {\n", n->id, ctype(n->dtype), ctype(n->dtype));
    E("    for (int o = 0; o < %lld; o++)\n", (long long)outer);
    E("        memcpy(y + (size_t)o * %lld, x + (size_t)o * %lld + %lld, %lld * sizeof(*y));\n", (long long)len,
      (long long)xrow, (long long)(n->start * inner), (long long)len);
    E("}\n");
}

static void k_vq_index(const Node *n, FILE *fp) {
    const Node *z = n->src[0], *cb = n->src[1];
    int64_t B = z->shape[0], C = z->shape[1], S = z->shape[2] * z->shape[3], K = cb->shape[0];
    E("static void n%d_vq_index(const float *restrict z, const float *restrict e, int32_t *restrict idx) {\n", n->id);
    E("    /* taming VectorQuantizer2: d_j = |z|^2 + |e_j|^2 - 2 z.e_j, first minimum wins */\n");
    E("    for (int b = 0; b < %lld; b++)\n", (long long)B);
    E("        for (int p = 0; p < %lld; p++) {\n", (long long)S);
    E("            double zz = 0.0;\n");
    E("            for (int c = 0; c < %lld; c++) { const double v = z[((size_t)b * %lld + c) * %lld + p]; zz += v * v; }\n",
      (long long)C, (long long)C, (long long)S);
    E("            double best = INFINITY;\n            int arg = 0;\n");
    E("            for (int j = 0; j < %lld; j++) {\n", (long long)K);
    E("                double ee = 0.0, ze = 0.0;\n");
    E("                for (int c = 0; c < %lld; c++) {\n", (long long)C);
    E("                    const double ev = e[(size_t)j * %lld + c];\n", (long long)C);
    E("                    ee += ev * ev;\n");
    E("                    ze += ev * z[((size_t)b * %lld + c) * %lld + p];\n", (long long)C, (long long)S);
    E("                }\n");
    E("                const double d = zz + ee - 2.0 * ze;\n");
    E("                if (d < best) { best = d; arg = j; }\n");
    E("            }\n");
    E("            idx[(size_t)b * %lld + p] = arg;\n", (long long)S);
    E("        }\n}\n");
}

static void k_vq_lookup(const Node *n, FILE *fp) {
    const Node *cb = n->src[0];
    int64_t B = n->shape[0], C = n->shape[1], S = n->shape[2] * n->shape[3], K = cb->shape[0];
    E("static int n%d_vq_lookup(const float *restrict e, const int32_t *restrict idx, float *restrict y) {\n", n->id);
    E("    for (int b = 0; b < %lld; b++)\n", (long long)B);
    E("        for (int p = 0; p < %lld; p++) {\n", (long long)S);
    E("            const int32_t j = idx[(size_t)b * %lld + p];\n", (long long)S);
    E("            if (j < 0 || j >= %lld) return ldm_fail(\"node %%%%%d vq_lookup: index %%d outside [0, %lld)\", (int)j);\n",
      (long long)K, n->id, (long long)K);
    E("            for (int c = 0; c < %lld; c++) y[((size_t)b * %lld + c) * %lld + p] = e[(size_t)j * %lld + c];\n",
      (long long)C, (long long)C, (long long)S, (long long)C);
    E("        }\n    return 0;\n}\n");
}

/* Emit the kernel of n (nothing for inputs, weights and views). */
static void emit_kernel(const Graph *g, const Node *n, FILE *fp) {
    if (n->op == OPK_INPUT || n->op == OPK_WEIGHT || n->op == OPK_RESHAPE) return;
    kernel_header(g, n, fp);
    switch (n->op) {
    case OPK_CONV2D: k_conv2d(n, fp); break;
    case OPK_LINEAR: k_linear(n, fp); break;
    case OPK_MATMUL: k_matmul(n, fp); break;
    case OPK_GROUP_NORM: k_group_norm(n, fp); break;
    case OPK_LAYER_NORM: k_layer_norm(n, fp); break;
    case OPK_SILU:
    case OPK_GELU:
    case OPK_QUICK_GELU:
    case OPK_SIGMOID: k_unary(n, fp); break;
    case OPK_GEGLU: k_geglu(n, fp); break;
    case OPK_SOFTMAX: k_softmax(n, fp); break;
    case OPK_ATTENTION: k_attention(n, fp); break;
    case OPK_UPSAMPLE: k_upsample(n, fp); break;
    case OPK_AVGPOOL: k_avgpool(n, fp); break;
    case OPK_ADD:
    case OPK_SUB:
    case OPK_MUL: k_binary(n, fp); break;
    case OPK_SCALE: k_scale(n, fp); break;
    case OPK_CONCAT: k_concat(n, fp); break;
    case OPK_TIMESTEP_EMB: k_timestep_emb(n, fp); break;
    case OPK_EMBEDDING: k_embedding(n, fp); break;
    case OPK_PERMUTE: k_permute(n, fp); break;
    case OPK_SLICE: k_slice(n, fp); break;
    case OPK_VQ_INDEX: k_vq_index(n, fp); break;
    case OPK_VQ_LOOKUP: k_vq_lookup(n, fp); break;
    default: break;
    }
}

/* ---- the entry function --------------------------------------------------- */

/* C expression for source s of node n inside forward(). */
static void src_ref(const Node *n, int s, char *buf, size_t size) {
    const Node *x = n->src[s], *w = weight_of(x);
    if (w && src_is_lw(n, s)) snprintf(buf, size, "w[%d]", w->weight_index);
    else if (w) snprintf(buf, size, "(const float *)w[%d].p", w->weight_index);
    else snprintf(buf, size, "v%d", x->id);
}

static void emit_call(const Graph *g, const Node *n, FILE *fp) {
    char b[64], kn[64];
    node_kernel_name(n, kn, sizeof kn);
    E("    /* %%%d %s @%s%s%s */\n", n->id, kn, loc_str(n->loc), n->scope ? " " : "", n->scope ? n->scope : "");
    if (n->op == OPK_RESHAPE) {
        if (weight_of(n)) return; /* a view of a weight: callers use the weight */
        E("    %s%s *v%d = v%d;\n", n->src[0]->op == OPK_INPUT ? "const " : "", ctype(n->dtype), n->id, n->src[0]->id);
        return;
    }
    if (n->storage != n)
        E("    %s *v%d = (%s *)(arena + %lld); /* its part of %%%d */\n", ctype(n->dtype), n->id, ctype(n->dtype),
          (long long)(n->storage->offset + n->into_offset), n->storage->id);
    else
        E("    %s *v%d = (%s *)(arena + %lld);\n", ctype(n->dtype), n->id, ctype(n->dtype), (long long)n->offset);
    E("    if (ldm_profiling) t0 = ldm_now();\n");
    int fallible = n->op == OPK_EMBEDDING || n->op == OPK_VQ_LOOKUP;
    E("    %sn%d_%s(", fallible ? "if (" : "", n->id, kernel_ident(n, kn, sizeof kn));
    for (int s = 0; s < n->nsrc; s++) {
        src_ref(n, s, b, sizeof b);
        E("%s, ", b);
    }
    E("v%d", n->id);
    if (n->scratch_bytes) E(", (float *)(arena + %lld)", (long long)n->scratch_offset);
    E(")%s;\n", fallible ? ") return -1" : "");
    E("    if (ldm_profiling) ldm_profile_record(\"%s\", %d, \"%s\", %.17g, ldm_now() - t0);\n", g->name, n->id,
      node_kernel_name(n, kn, sizeof kn), node_flops(n));
}

static void emit_tensor_table(const char *name, Node *const *nodes, const Output *outs, int count, int is_out, FILE *fp,
                              const Graph *g) {
    E("static const LdmTensorInfo %s[%d] = {\n", name, count ? count : 1);
    for (int i = 0; i < count; i++) {
        const Node *n = is_out ? outs[i].node : nodes[i];
        const char *nm = is_out ? outs[i].name : n->name;
        const int w = n->op == OPK_WEIGHT, f32 = w && n->needs_f32;
        const char *lay = !w ? NULL : n->wlayout == LDM_WL_BPANELS ? "LDM_TF_BPANELS"
                                    : n->wlayout == LDM_WL_APANELS ? "LDM_TF_APANELS" : NULL;
        char flags[64];
        snprintf(flags, sizeof flags, "%s%s%s", f32 ? "LDM_TF_F32" : "", f32 && lay ? " | " : "",
                 lay ? lay : f32 ? "" : "0");
        E("    {\"%s\", %s, %s, %d, {", nm, n->dtype == DT_I32 ? "LDM_I32" : "LDM_F32", flags, n->ndim);
        for (int d = 0; d < n->ndim; d++) E("%s%lld", d ? ", " : "", (long long)n->shape[d]);
        E("}},\n");
    }
    if (!count) E("    {\"\", 0, 0, 0, {0}},\n");
    E("};\n");
    (void)g;
}

int codegen(const Graph *g, const CodegenInfo *info, FILE *fp) {
    const char *sym = info->symbol ? info->symbol : g->name; /* exported: <sym>_forward, <sym>_model */
    char upper[256];
    size_t k = 0;
    for (const char *p = g->name; *p && k + 1 < sizeof upper; p++) upper[k++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    upper[k] = 0;
    E("/* ldmc %s | graph %s | config %s | %s | source %s */\n", LDMC_VERSION, info->graph_path,
      info->config_path ? info->config_path : "(none)", info->defines, info->source_hash);
    E("/*\n * Generated by ldmc from %s: do not edit.\n", info->graph_path);
    E(" * Graph '%s': %d nodes, %lld parameters, %.6g GFLOP per call (as written; %.6g after fusion).\n", g->name,
      g->n_nodes, (long long)graph_param_count(g), g->nominal_flops / 1e9, graph_flops(g) / 1e9);
    E(" * Arena: %lld bytes of activations and scratch (the naive sum is %lld).\n", (long long)g->arena_bytes,
      (long long)g->naive_bytes);
    E(" * Entry point: %s_forward(weights, inputs, outputs, arena); tables in %s_model.\n */\n", sym, sym);
    E("#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n\n#include <cblas.h>\n\n");
    E("#include \"kernels.h\"\n#include \"model.h\"\n#include \"util.h\"\n\n");
    E("#define %s_ARENA_BYTES %lldu\n", upper, (long long)g->arena_bytes);
    E("#define %s_N_WEIGHTS %d\n", upper, g->n_weights);

    for (int i = 0; i < g->n_nodes; i++) emit_kernel(g, g->nodes[i], fp);

    E("\n/* ---- entry point ---- */\n\n");
    E("int %s_forward(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena) {\n", sym);
    E("    (void)w;\n    double t0 = 0.0;\n    (void)t0;\n");
    for (int i = 0; i < g->n_inputs; i++) {
        const Node *n = g->inputs[i];
        E("    const %s *v%d = (const %s *)in[%d]; /* input %s */\n", ctype(n->dtype), n->id, ctype(n->dtype), i, n->name);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        if (n->op == OPK_INPUT || n->op == OPK_WEIGHT) continue;
        emit_call(g, n, fp);
    }
    for (int i = 0; i < g->n_outputs; i++) {
        const Node *n = g->outputs[i].node;
        E("    memcpy(out[%d], v%d, %lld); /* output %s */\n", i, n->id, (long long)(node_numel(n) * 4), g->outputs[i].name);
    }
    E("    return 0;\n}\n\n");

    emit_tensor_table("weight_table", g->weights, NULL, g->n_weights, 0, fp, g);
    emit_tensor_table("input_table", g->inputs, NULL, g->n_inputs, 0, fp, g);
    emit_tensor_table("output_table", NULL, g->outputs, g->n_outputs, 1, fp, g);
    E("\nconst LdmModel %s_model = {\n", sym);
    E("    \"%s\",\n    \"ldmc %s | graph %s | config %s | %s\",\n", g->name, LDMC_VERSION, info->graph_path,
      info->config_path ? info->config_path : "(none)", info->defines);
    E("    %d, weight_table,\n    %d, input_table,\n    %d, output_table,\n", g->n_weights, g->n_inputs, g->n_outputs);
    E("    %s_ARENA_BYTES,\n    %.17g,\n    %lld,\n    %s_forward,\n};\n", upper,
      g->nominal_flops > 0 ? g->nominal_flops : graph_flops(g),
      (long long)graph_param_count(g), sym);
    E("\n#ifdef LDM_RUNNER_MAIN\nint main(int argc, char **argv) { return ldm_runner_main(&%s_model, argc, argv); }\n#endif\n",
      sym);
    return ferror(fp) ? ldm_fail("write error while generating C") : 0;
}
