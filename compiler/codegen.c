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
#define _GNU_SOURCE /* open_memstream */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_sizes.h"
#include "ldmc.h"

#define E(...) fprintf(fp, __VA_ARGS__)

/* Loops with fewer iterations than this run on one thread. */
#define PAR_MIN 32768

/* ---- sizes in generated code ------------------------------------------------
 * A size is k times a product of run-time extents (a monomial): a dim of a
 * node, or a product of dims. Static sizes print as literals, exactly as
 * before extents existed; run-time ones as C expressions over the kernel's
 * locals ext_NAME (= ext[k]), e.g. "4096 * ext_B". */
typedef struct Sz {
    int64_t k;                   /* constant factor */
    int n;                       /* number of extent factors */
    int e[2 * MAX_DIMS];         /* their indices */
} Sz;

static const Graph *cur_graph;   /* the graph being generated (extent names) */

static Sz sz_k(int64_t k) { return (Sz){.k = k}; }

static Sz sz_mul(Sz a, Sz b) {
    a.k *= b.k;
    for (int i = 0; i < b.n && a.n < 2 * MAX_DIMS; i++) a.e[a.n++] = b.e[i];
    return a;
}

static Sz sz_dim(const Node *n, int d) {
    int k = n->dyn[d] - 1;
    if (k < 0) return sz_k(n->shape[d]);
    Sz s = sz_k(n->shape[d] / n->graph->extents[k].max);
    s.e[s.n++] = k;
    return s;
}

static Sz sz_prod(const Node *n, int from, int to) {
    Sz s = sz_k(1);
    for (int i = from; i < to; i++) s = sz_mul(s, sz_dim(n, i));
    return s;
}

/* The size as a C expression (rotating static buffers: several may appear
 * in one printf). */
static const char *sz_c(Sz s) {
    static char pool[24][192];
    static int slot;
    char *b = pool[slot++ % 24];
    size_t k = 0;
    if (s.k != 1 || !s.n) k += (size_t)snprintf(b, 192, "%lld", (long long)s.k);
    for (int i = 0; i < s.n && k < 192; i++)
        k += (size_t)snprintf(b + k, 192 - k, "%sext_%s", k ? " * " : "", cur_graph->extents[s.e[i]].name);
    return b;
}

/* As an int (struct fields and int arguments): "320" or "(int)(4 * ext_B)". */
static const char *sz_int(Sz s) {
    static char pool[24][208];
    static int slot;
    if (!s.n) return sz_c(s);
    char *b = pool[slot++ % 24];
    snprintf(b, 208, s.k == 1 && s.n == 1 ? "(int)%s" : "(int)(%s)", sz_c(s));
    return b;
}

/* As a size_t loop bound: "4096u" or "(size_t)(4096 * ext_B)". */
static const char *sz_size(Sz s) {
    static char pool[8][208];
    static int slot;
    char *b = pool[slot++ % 8];
    if (!s.n) snprintf(b, 208, "%lldu", (long long)s.k);
    else snprintf(b, 208, "(size_t)(%s)", sz_c(s));
    return b;
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
    if (n->scope) E("  (scope %s)", n->scope);
    E("\n");
    /* provenance: the graph-file calls that built the node, then its op's line */
    if (n->prov) E(" *   from  %s\n", n->prov);
    else if (n->loc.file) E(" *   from  %s:%d\n", n->loc.file->path, n->loc.line);
    if (n->fused) E(" *   fuses %s\n", n->fused);
    for (int s = 0; s < n->nsrc; s++) {
        const Node *x = n->src[s], *w = weight_of(x);
        if (w) E(" *   in  %s %s\n", key_of(g, w), shape_str(x, b, sizeof b));
        else E(" *   in  %%%d %s %s\n", x->id, node_kernel_name(x, kn, sizeof kn), shape_str(x, b, sizeof b));
    }
    E(" *   out %s%s", n->dtype == DT_I32 ? "i32" : "f32", shape_str(n, b, sizeof b));
    if (n->storage == n) E(" at arena+%lld", (long long)plan_offset(g, n));
    else if (n->op != OPK_RESHAPE)
        E(" written straight into %%%d at arena+%lld (samples %lld floats apart)", n->storage->id,
          (long long)plan_offset(g, n), (long long)(node_numel(n) / n->shape[0] + n->out_gap));
    if (n->scratch_bytes)
        E("; scratch %lld bytes at arena+%lld", (long long)n->scratch_bytes, (long long)g->plan[n->scratch_buf].offset);
    E("\n */\n");
}

/* ---- kernels --------------------------------------------------------------- */

/* The kernel of n reads run-time sizes: it takes `const int64_t *ext` last. */
static int kernel_dyn(const Node *n) {
    if (node_is_dyn(n)) return 1;
    for (int s = 0; s < n->nsrc; s++)
        if (node_is_dyn(n->src[s])) return 1;
    return 0;
}

/* ", const int64_t *ext" for a kernel with run-time sizes. */
static const char *ext_param(const Node *n) { return kernel_dyn(n) ? ", const int64_t *ext" : ""; }

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
    E("%s)", ext_param(n));
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

/* "static const" for a shape struct of literals, "const" for one built
 * from run-time sizes at every call. */
static const char *shape_qual(const Node *n) { return kernel_dyn(n) ? "const" : "static const"; }

static void k_conv2d(const Node *n, FILE *fp) {
    const char *names[MAX_SRC];
    char kn[64];
    gemm_src_names(n, names);
    LdmConvShape c = node_conv_shape(n, NULL);
    static const char *algos[] = {"LDM_CONV_IM2COL", "LDM_CONV_POINTWISE", "LDM_CONV_WINOGRAD", "LDM_CONV_DIRECT"};
    E("static void n%d_%s(", n->id, kernel_ident(n, kn, sizeof kn));
    emit_params(n, fp, names);
    E(" {\n");
    if (n->out_gap) E("    /* y is this node's part of a concatenation: %lld floats between samples */\n", (long long)n->out_gap);
    if (c.up)
        E("    /* x [%d, %d] is read upsampled (nearest, x%d) to [%d, %d]: the Winograd kernel's 4 sub-pixel phases,\n"
          "     * 2x2 sums of w's taps, on x itself (kernel_sizes.h ldm_wg_core_shape) */\n",
          c.H, c.W, c.up, c.HO, c.WO);
    E("    %s LdmConvShape s = {.N = %s, .C = %d, .H = %d, .W = %d, .O = %d, .KH = %d, .KW = %d,\n", shape_qual(n),
      sz_int(sz_dim(n->src[0], 0)), c.C, c.H, c.W, c.O, c.KH, c.KW);
    const int ind = 4 + (int)strlen(shape_qual(n)) + (int)strlen(" LdmConvShape s = {");
    E("%*s.stride_h = %d, .stride_w = %d, .pad_t = %d, .pad_b = %d, .pad_l = %d, .pad_r = %d,\n", ind, "",
      c.stride_h, c.stride_w, c.pad_t, c.pad_b, c.pad_l, c.pad_r);
    if (c.up) E("%*s.HO = %d, .WO = %d, .y_gap = %lld, .up = %d};\n", ind, "", c.HO, c.WO, (long long)n->out_gap, c.up);
    else E("%*s.HO = %d, .WO = %d, .y_gap = %lld};\n", ind, "", c.HO, c.WO, (long long)n->out_gap);
    int has_b = 0;
    for (int s = 2; s < n->nsrc; s++) has_b |= !strcmp(names[s], "b");
    E("    const LdmEpilogue ep = {.bias = %s, .rowadd = %s, .residual = %s, .relu = %d};\n", has_b ? "b" : "NULL",
      n->ep_rowadd ? "rowadd" : "NULL", n->ep_residual ? "residual" : "NULL", n->act == ACT_RELU);
    E("    ldm_conv2d(&s, %s, x, w, &ep, y, %s);\n", algos[n->algo], n->scratch_bytes ? "scratch" : "NULL");
    E("}\n");
}

static void k_linear(const Node *n, FILE *fp) {
    const char *names[MAX_SRC];
    char kn[64];
    gemm_src_names(n, names);
    const Node *w = n->src[1];
    int64_t O = w->shape[0], I = w->shape[1], M = node_numel(n->src[0]) / I;
    Sz Ms = sz_prod(n->src[0], 0, n->src[0]->ndim - 1);
    int has_b = 0;
    for (int s = 2; s < n->nsrc; s++) has_b |= !strcmp(names[s], "b");
    /* the GEMM accumulates onto bias and residual, except under GEGLU, whose
     * pass over the product adds the bias (no residual there: fuse.c) */
    const int geglu = n->act == ACT_GEGLU, acc = !geglu && (has_b || n->ep_residual);
    const int64_t R = geglu ? ldm_geglu_rows(M, O) : M; /* rows per block (for the maximum of M) */
    E("static void n%d_%s(", n->id, kernel_ident(n, kn, sizeof kn));
    emit_params(n, fp, names);
    E(" {\n");
    E("    /* %s[%s, %lld] = %sx[%s, %lld] w[%lld, %lld]^T%s%s%s */\n", geglu ? "p" : "y", sz_c(Ms), (long long)O,
      n->pro_lnorm ? "layer_norm(x) with " : "", sz_c(Ms), (long long)I, (long long)O, (long long)I,
      has_b ? " + b" : "", n->ep_residual ? " + residual" : "",
      geglu ? "; y = geglu(p), in blocks of rows (p in scratch)" : "");
    if (Ms.n) {
        E("    const int M_ = %s; /* rows at run time, at most %lld */\n", sz_int(Ms), (long long)M);
        E("    enum { O_ = %lld, I_ = %lld, R_ = %lld, LD_ = %lld /* row stride of %s */ };\n", (long long)O,
          (long long)I, (long long)R, (long long)(geglu ? ldm_geglu_ld(O) : O), geglu ? "p" : "y");
    } else {
        E("    enum { M_ = %lld, O_ = %lld, I_ = %lld, R_ = %lld, LD_ = %lld /* row stride of %s */ };\n", (long long)M,
          (long long)O, (long long)I, (long long)R, (long long)(geglu ? ldm_geglu_ld(O) : O), geglu ? "p" : "y");
    }
    if (n->pro_lnorm) {
        E("    /* layer_norm (eps %g) fused: statistics of the rows of x, which the GEMM normalises as it packs them */\n",
          n->eps);
        E("    float *mean = scratch + %lld, *rstd = mean + M_;\n", (long long)(geglu ? R * ldm_geglu_ld(O) : 0));
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
    if (n->pro_lnorm) E("        const LdmRowNorm ln = {.mean = mean + m0, .rstd = rstd + m0, .gamma = ln_w, .beta = ln_b};\n");
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
    Sz Bt = sz_prod(n, 0, r - 2), M = sz_dim(n, r - 2), N = sz_dim(n, r - 1), K = sz_k(a->shape[r - 1]);
    Sz ldb = sz_dim(b, r - 1);
    E("static void n%d_matmul(const float *restrict a, const float *restrict b, float *restrict y%s) {\n", n->id,
      ext_param(n));
    E("    for (int i = 0; i < %s; i++)\n", sz_c(Bt));
    E("        cblas_sgemm(CblasRowMajor, CblasNoTrans, %s, %s, %s, %s, 1.0f, a + (size_t)i * %s, %s, "
      "b + (size_t)i * %s, %s, 0.0f, y + (size_t)i * %s, %s);\n",
      n->trans_b ? "CblasTrans" : "CblasNoTrans", sz_int(M), sz_int(N), sz_int(K), sz_c(sz_mul(M, K)), sz_int(K),
      sz_c(sz_mul(K, N)), sz_int(ldb), sz_c(sz_mul(M, N)), sz_int(N));
    E("}\n");
}

static void k_group_norm(const Node *n, FILE *fp) {
    Sz N = sz_dim(n, 0), S = sz_prod(n, 2, n->ndim);
    int64_t C = n->shape[1], G = n->groups;
    E("static void n%d_group_norm%s(const float *restrict x, const float *restrict w, const float *restrict b, float *restrict y%s) {\n",
      n->id, n->act == ACT_SILU ? "_silu" : "", ext_param(n));
    E("    /* %s samples x %lld groups of %lld channels x %s positions, eps %g%s */\n", sz_c(N), (long long)G,
      (long long)(C / G), sz_c(S), n->eps, n->act == ACT_SILU ? ", then SiLU (fused)" : "");
    E("    ldm_group_norm(%s, %lld, %s, %lld, %.17g, x, w, b, y, %d);\n}\n", sz_int(N), (long long)C, sz_c(S),
      (long long)G, n->eps, n->act == ACT_SILU);
}

static void k_layer_norm(const Node *n, FILE *fp) {
    int64_t D = n->shape[n->ndim - 1], M = node_numel(n) / D;
    Sz Ms = sz_prod(n, 0, n->ndim - 1);
    E("static void n%d_layer_norm(const float *restrict x, const float *restrict w, const float *restrict b, float *restrict y%s) {\n",
      n->id, ext_param(n));
    par(fp, M * D, "    ");
    E("    for (int m = 0; m < %s; m++) {\n", sz_c(Ms));
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
    case OPK_RELU: expr = "v > 0.0f ? v : 0.0f"; break;
    case OPK_TANH: expr = "tanhf(v)"; break;
    default: break;
    }
    E("static void n%d_%s(const float *restrict x, float *restrict y%s) {\n", n->id, op_names[n->op], ext_param(n));
    par(fp, T, "    ");
    E("    for (size_t i = 0; i < %s; i++) {\n", sz_size(sz_prod(n, 0, n->ndim)));
    E("        const float v = x[i];\n");
    E("        y[i] = %s;\n", expr);
    E("    }\n}\n");
}

static void k_scale(const Node *n, FILE *fp) {
    int64_t T = node_numel(n);
    char fa[48], fb[48];
    E("static void n%d_scale(const float *restrict x, float *restrict y%s) {\n", n->id, ext_param(n));
    par(fp, T, "    ");
    E("    for (size_t i = 0; i < %s; i++) y[i] = x[i] * %s + %s;\n", sz_size(sz_prod(n, 0, n->ndim)),
      flit(n->alpha, fa, sizeof fa), flit(n->beta, fb, sizeof fb));
    E("}\n");
}

static void k_geglu(const Node *n, FILE *fp) {
    int64_t D = n->shape[n->ndim - 1], M = node_numel(n) / D;
    E("static void n%d_geglu(const float *restrict x, float *restrict y%s) {\n", n->id, ext_param(n));
    E("    /* y = a * gelu(g): a = first %lld channels (value), g = last %lld (gate), exact erf GELU */\n", (long long)D, (long long)D);
    par(fp, M * D, "    ");
    E("    for (int m = 0; m < %s; m++)\n", sz_c(sz_prod(n, 0, n->ndim - 1)));
    E("        for (int d = 0; d < %lld; d++) {\n", (long long)D);
    E("            const float a = x[(size_t)m * %lld + d], g = x[(size_t)m * %lld + %lld + d];\n", (long long)(2 * D),
      (long long)(2 * D), (long long)D);
    E("            y[(size_t)m * %lld + d] = a * (0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));\n", (long long)D);
    E("        }\n}\n");
}

static void k_softmax(const Node *n, FILE *fp) {
    int64_t D = n->shape[n->ndim - 1], M = node_numel(n) / D;
    const char *Ds = sz_c(sz_dim(n, n->ndim - 1));
    E("static void n%d_softmax(const float *restrict x, float *restrict y%s) {\n", n->id, ext_param(n));
    par(fp, M * D, "    ");
    E("    for (int m = 0; m < %s; m++) {\n", sz_c(sz_prod(n, 0, n->ndim - 1)));
    E("        const float *xr = x + (size_t)m * %s;\n", Ds);
    E("        float *yr = y + (size_t)m * %s;\n", Ds);
    E("        float mx = xr[0];\n");
    E("        for (int i = 1; i < %s; i++) mx = xr[i] > mx ? xr[i] : mx;\n", Ds);
    E("        float sum = 0.0f;\n");
    E("        for (int i = 0; i < %s; i++) { yr[i] = expf(xr[i] - mx); sum += yr[i]; }\n", Ds);
    E("        const float inv = 1.0f / sum;\n");
    E("        for (int i = 0; i < %s; i++) yr[i] *= inv;\n", Ds);
    E("    }\n}\n");
}

static void k_attention(const Node *n, FILE *fp) {
    LdmAttnShape a = node_attn_shape(n, NULL);
    const Node *q = n->src[0], *k = n->src[1];
    Sz Tq = sz_dim(q, 1), Tk = sz_dim(k, 1);
    char fa[48];
    E("static void n%d_attention(const float *restrict q, const float *restrict k, const float *restrict v, float *restrict y%s%s) {\n",
      n->id, n->scratch_bytes ? ", float *restrict scratch" : "", ext_param(n));
    E("    /* fused multi-head attention (flash scheme: query tiles x key tiles, online softmax);\n");
    E("     * %d heads of %d (q, k) / %d (v) channels, scale %s%s */\n", a.H, a.d, a.dv, flit(a.scale, fa, sizeof fa),
      a.causal ? ", causal" : "");
    E("    %s LdmAttnShape s = {.B = %s, .Tq = %s, .Tk = %s, .H = %d, .d = %d, .dv = %d,\n", shape_qual(n),
      sz_int(sz_dim(q, 0)), sz_int(Tq), sz_int(Tk), a.H, a.d, a.dv);
    const int ind = 4 + (int)strlen(shape_qual(n)) + (int)strlen(" LdmAttnShape s = {");
    E("%*s.ldq = %d, .ldk = %d, .ldv = %d, .ldy = %d,\n", ind, "", a.ldq, a.ldk, a.ldv, a.ldy);
    E("%*s.bsq = %s, .bsk = %s, .bsv = %s, .bsy = %s,\n", ind, "", sz_c(sz_mul(Tq, sz_k(a.ldq))),
      sz_c(sz_mul(Tk, sz_k(a.ldk))), sz_c(sz_mul(Tk, sz_k(a.ldv))), sz_c(sz_mul(Tq, sz_k(a.ldy))));
    E("%*s.scale = %s, .causal = %d};\n", ind, "", flit(a.scale, fa, sizeof fa), a.causal);
    E("    ldm_attention(&s, q, k, v, y, %s);\n", n->scratch_bytes ? "scratch" : "NULL");
    E("}\n");
}

static void k_upsample(const Node *n, FILE *fp) {
    int64_t HO = n->shape[2], WO = n->shape[3], f = n->factor;
    int64_t H = HO / f, W = WO / f;
    E("static void n%d_upsample_nearest(const float *restrict x, float *restrict y%s) {\n", n->id, ext_param(n));
    par(fp, node_numel(n), "    ");
    E("    for (int c = 0; c < %s; c++)\n", sz_c(sz_prod(n, 0, 2)));
    E("        for (int oy = 0; oy < %lld; oy++)\n", (long long)HO);
    E("            for (int ox = 0; ox < %lld; ox++)\n", (long long)WO);
    E("                y[((size_t)c * %lld + oy) * %lld + ox] = x[((size_t)c * %lld + oy / %lld) * %lld + ox / %lld];\n",
      (long long)HO, (long long)WO, (long long)H, (long long)f, (long long)W, (long long)f);
    E("}\n");
}

static void k_avgpool(const Node *n, FILE *fp) {
    const Node *x = n->src[0];
    int64_t HO = n->shape[2], WO = n->shape[3], k = n->factor;
    int64_t H = x->shape[2], W = x->shape[3];
    char fk[48];
    E("static void n%d_avg_pool2d(const float *restrict x, float *restrict y%s) {\n", n->id, ext_param(n));
    par(fp, node_numel(x), "    ");
    E("    for (int c = 0; c < %s; c++)\n", sz_c(sz_prod(n, 0, 2)));
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
    E("static void n%d_%s(const float *restrict a, const float *restrict b, float *restrict y%s) {\n", n->id,
      op_names[n->op], ext_param(n));
    if (node_numel(a) == T && node_numel(b) == T) {
        par(fp, T, "    ");
        E("    for (size_t i = 0; i < %s; i++) y[i] = a[i] %s b[i];\n", sz_size(sz_prod(n, 0, n->ndim)), op);
        E("}\n");
        return;
    }
    int r = n->ndim;
    Sz sa[MAX_DIMS], sb[MAX_DIMS];
    Sz ka = sz_k(1), kb = sz_k(1);
    for (int i = r - 1; i >= 0; i--) {
        int ia = a->ndim - r + i, ib = b->ndim - r + i;
        Sz da = ia >= 0 ? sz_dim(a, ia) : sz_k(1), db = ib >= 0 ? sz_dim(b, ib) : sz_k(1);
        int a1 = !da.n && da.k == 1, b1 = !db.n && db.k == 1;
        sa[i] = a1 ? sz_k(0) : ka;
        sb[i] = b1 ? sz_k(0) : kb;
        ka = sz_mul(ka, da);
        kb = sz_mul(kb, db);
    }
    E("    /* broadcast: a strides");
    for (int i = 0; i < r; i++) E(" %s", sz_c(sa[i]));
    E(", b strides");
    for (int i = 0; i < r; i++) E(" %s", sz_c(sb[i]));
    E(" */\n");
    if (r > 1 && n->shape[0] > 1 && T >= PAR_MIN) E("    #pragma omp parallel for\n");
    for (int i = 0; i < r; i++) E("%*sfor (int64_t i%d = 0; i%d < %s; i%d++)\n", 4 + 4 * i, "", i, i, sz_c(sz_dim(n, i)), i);
    E("%*s{\n", 4 + 4 * r, "");
    E("%*sconst size_t o = ", 8 + 4 * r, "");
    for (int i = 0; i < r; i++) E("%si%d * %s", i ? " + " : "", i, sz_c(sz_prod(n, i + 1, r)));
    E(";\n%*sy[o] = a[", 8 + 4 * r, "");
    int first = 1;
    for (int i = 0; i < r; i++)
        if (sa[i].k) { E("%si%d * %s", first ? "" : " + ", i, sz_c(sa[i])); first = 0; }
    if (first) E("0");
    E("] %s b[", op);
    first = 1;
    for (int i = 0; i < r; i++)
        if (sb[i].k) { E("%si%d * %s", first ? "" : " + ", i, sz_c(sb[i])); first = 0; }
    if (first) E("0");
    E("];\n%*s}\n}\n", 4 + 4 * r, "");
}

static void k_concat(const Node *n, FILE *fp) {
    Sz outer = sz_prod(n, 0, n->axis), inner = sz_prod(n, n->axis + 1, n->ndim);
    E("static void n%d_concat(", n->id);
    for (int s = 0; s < n->nsrc; s++) E("const %s *restrict x%d, ", ctype(n->dtype), s);
    E("%s *restrict y%s) {\n", ctype(n->dtype), ext_param(n));
    E("    for (int o = 0; o < %s; o++) {\n", sz_c(outer));
    E("        %s *dst = y + (size_t)o * %s;\n", ctype(n->dtype), sz_c(sz_mul(sz_k(n->shape[n->axis]), inner)));
    for (int s = 0; s < n->nsrc; s++) {
        const char *len = sz_c(sz_mul(sz_k(n->src[s]->shape[n->axis]), inner));
        if (n->src[s]->storage == n)
            E("        /* x%d: %%%d wrote it in place */\n", s, n->src[s]->id);
        else
            E("        memcpy(dst, x%d + (size_t)o * %s, %s * sizeof(*y));\n", s, len, len);
        if (s + 1 < n->nsrc) E("        dst += %s;\n", len);
    }
    E("    }\n");
    for (int s = 0; s < n->nsrc; s++)
        if (n->src[s]->storage == n) E("    (void)x%d;\n", s);
    E("}\n");
}

static void k_timestep_emb(const Node *n, FILE *fp) {
    int64_t D = n->shape[1], half = D / 2;
    const char *B = sz_c(sz_dim(n, 0));
    E("static void n%d_timestep_embedding(const float *restrict t, float *restrict y%s) {\n", n->id, ext_param(n));
    E("    /* openaimodel.timestep_embedding: freqs = exp(-ln(%g) * arange(%lld) / %lld) in float32, [cos, sin] */\n",
      n->max_period, (long long)half, (long long)half);
    E("    const float c = (float)(-log(%.17g));\n", n->max_period);
    E("    for (int b = 0; b < %s; b++)\n", B);
    E("        for (int i = 0; i < %lld; i++) {\n", (long long)half);
    E("            const float freq = expf(c * (float)i / %lld.0f);\n", (long long)half);
    E("            const float arg = t[b] * freq;\n");
    E("            y[b * %lld + i] = cosf(arg);\n", (long long)D);
    E("            y[b * %lld + %lld + i] = sinf(arg);\n", (long long)D, (long long)half);
    E("        }\n");
    if (D % 2) E("    for (int b = 0; b < %s; b++) y[b * %lld + %lld] = 0.0f; /* odd dim: zero pad */\n", B, (long long)D, (long long)(D - 1));
    E("}\n");
}

static void k_embedding(const Node *n, FILE *fp) {
    const Node *table = n->src[0];
    int64_t V = table->shape[0], D = table->shape[1];
    E("static int n%d_embedding(LdmW table, const int32_t *restrict ids, float *restrict y%s) {\n", n->id, ext_param(n));
    E("    for (int i = 0; i < %s; i++) {\n", sz_c(sz_prod(n->src[1], 0, n->src[1]->ndim)));
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
    E("static void n%d_permute(const %s *restrict x, %s *restrict y%s) {\n", n->id, ctype(n->dtype), ctype(n->dtype),
      ext_param(n));
    if (r == 3 && n->perm[0] == 0 && n->perm[1] == 2 && n->perm[2] == 1 && n->dtype == DT_F32) {
        /* feature maps to tokens or back: the blocked transpose */
        E("    ldm_transpose(%s, %s, %s, x, y);\n}\n", sz_int(sz_dim(x, 0)), sz_int(sz_dim(x, 1)), sz_int(sz_dim(x, 2)));
        return;
    }
    if (r > 1 && n->shape[0] > 1 && node_numel(n) >= PAR_MIN) E("    #pragma omp parallel for\n");
    for (int i = 0; i < r; i++) E("%*sfor (int64_t i%d = 0; i%d < %s; i%d++)\n", 4 + 4 * i, "", i, i, sz_c(sz_dim(n, i)), i);
    E("%*sy[", 4 + 4 * r, "");
    for (int i = 0; i < r; i++) E("%si%d * %s", i ? " + " : "", i, sz_c(sz_prod(n, i + 1, r)));
    E("] = x[");
    for (int i = 0; i < r; i++) E("%si%d * %s", i ? " + " : "", i, sz_c(sz_prod(x, n->perm[i] + 1, r)));
    E("];\n}\n");
}

static void k_slice(const Node *n, FILE *fp) {
    const Node *x = n->src[0];
    Sz outer = sz_prod(n, 0, n->axis), inner = sz_prod(n, n->axis + 1, n->ndim);
    const char *len = sz_c(sz_mul(sz_k(n->end - n->start), inner));
    E("static void n%d_slice(const %s *restrict x, %s *restrict y%s) {\n", n->id, ctype(n->dtype), ctype(n->dtype),
      ext_param(n));
    E("    for (int o = 0; o < %s; o++)\n", sz_c(outer));
    E("        memcpy(y + (size_t)o * %s, x + (size_t)o * %s + %s, %s * sizeof(*y));\n", len,
      sz_c(sz_mul(sz_k(x->shape[n->axis]), inner)), sz_c(sz_mul(sz_k(n->start), inner)), len);
    E("}\n");
}

static void k_vq_index(const Node *n, FILE *fp) {
    const Node *z = n->src[0], *cb = n->src[1];
    int64_t C = z->shape[1], S = z->shape[2] * z->shape[3], K = cb->shape[0];
    E("static void n%d_vq_index(const float *restrict z, const float *restrict e, int32_t *restrict idx%s) {\n", n->id,
      ext_param(n));
    E("    /* taming VectorQuantizer2: d_j = |z|^2 + |e_j|^2 - 2 z.e_j, first minimum wins */\n");
    E("    for (int b = 0; b < %s; b++)\n", sz_c(sz_dim(z, 0)));
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
    int64_t C = n->shape[1], S = n->shape[2] * n->shape[3], K = cb->shape[0];
    E("static int n%d_vq_lookup(const float *restrict e, const int32_t *restrict idx, float *restrict y%s) {\n", n->id,
      ext_param(n));
    E("    for (int b = 0; b < %s; b++)\n", sz_c(sz_dim(n, 0)));
    E("        for (int p = 0; p < %lld; p++) {\n", (long long)S);
    E("            const int32_t j = idx[(size_t)b * %lld + p];\n", (long long)S);
    E("            if (j < 0 || j >= %lld) return ldm_fail(\"node %%%%%d vq_lookup: index %%d outside [0, %lld)\", (int)j);\n",
      (long long)K, n->id, (long long)K);
    E("            for (int c = 0; c < %lld; c++) y[((size_t)b * %lld + c) * %lld + p] = e[(size_t)j * %lld + c];\n",
      (long long)C, (long long)C, (long long)S, (long long)C);
    E("        }\n    return 0;\n}\n");
}

/* y[b] = x[b, t*] with t* the first position of the largest ids[b, t]
 * (torch.argmax: CLIP's pooled output at the end token). */
static void k_take_argmax(const Node *n, FILE *fp) {
    int64_t T = n->src[0]->shape[1], C = n->shape[1];
    E("static void n%d_take_argmax(const float *restrict x, const int32_t *restrict ids, float *restrict y%s) {\n",
      n->id, ext_param(n));
    E("    for (int b = 0; b < %s; b++) {\n", sz_c(sz_dim(n, 0)));
    E("        int best = 0;\n");
    E("        for (int t = 1; t < %lld; t++)\n", (long long)T);
    E("            if (ids[(size_t)b * %lld + t] > ids[(size_t)b * %lld + best]) best = t;\n", (long long)T, (long long)T);
    E("        memcpy(y + (size_t)b * %lld, x + ((size_t)b * %lld + best) * %lld, %lld * sizeof *y);\n", (long long)C,
      (long long)T, (long long)C, (long long)C);
    E("    }\n}\n");
}

/* Emit the kernel of n (nothing for inputs, weights and views). */
static void emit_kernel_body(const Node *n, FILE *fp) {
    switch (n->op) {
    case OPK_CONV2D: k_conv2d(n, fp); break;
    case OPK_LINEAR: k_linear(n, fp); break;
    case OPK_MATMUL: k_matmul(n, fp); break;
    case OPK_GROUP_NORM: k_group_norm(n, fp); break;
    case OPK_LAYER_NORM: k_layer_norm(n, fp); break;
    case OPK_SILU:
    case OPK_GELU:
    case OPK_QUICK_GELU:
    case OPK_SIGMOID:
    case OPK_RELU:
    case OPK_TANH: k_unary(n, fp); break;
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
    case OPK_TAKE_ARGMAX: k_take_argmax(n, fp); break;
    default: break;
    }
}

/* text contains the identifier id (not as part of a longer one) */
static int has_ident(const char *text, const char *id) {
    size_t n = strlen(id);
    for (const char *p = strstr(text, id); p; p = strstr(p + 1, id)) {
        char before = p > text ? p[-1] : ' ', after = p[n];
        int word = (before == '_' || (before >= '0' && before <= '9') || (before >= 'A' && before <= 'Z') ||
                    (before >= 'a' && before <= 'z'));
        int more = (after == '_' || (after >= '0' && after <= '9') || (after >= 'A' && after <= 'Z') ||
                    (after >= 'a' && after <= 'z'));
        if (!word && !more) return 1;
    }
    return 0;
}

/* A kernel with run-time sizes starts by naming the extents it uses:
 *   const int64_t ext_B = ext[0]; (B: 1..2)
 * so the body is written first and the names it uses are declared. */
static void emit_kernel(const Graph *g, const Node *n, FILE *fp) {
    if (n->op == OPK_INPUT || n->op == OPK_WEIGHT || n->op == OPK_RESHAPE) return;
    kernel_header(g, n, fp);
    if (!kernel_dyn(n)) {
        emit_kernel_body(n, fp);
        return;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) ldm_internal_error("open_memstream: out of memory");
    emit_kernel_body(n, mem);
    fclose(mem);
    char *open = strstr(text, " {\n");
    if (!open) ldm_internal_error("kernel of node %d has no body", n->id);
    fwrite(text, 1, (size_t)(open - text) + 3, fp);
    for (int k = 0; k < g->n_extents; k++) {
        char id[160];
        snprintf(id, sizeof id, "ext_%s", g->extents[k].name);
        if (!has_ident(open, id)) continue;
        const Extent *e = &g->extents[k];
        E("    const int64_t %s = ext[%d]; /* run-time extent %s: ", id, k, e->name);
        if (e->step > 1) E("a multiple of %lld up to %lld */\n", (long long)e->step, (long long)e->max);
        else E("1..%lld */\n", (long long)e->max);
    }
    fputs(open + 3, fp);
    free(text);
}

/* ---- the entry function --------------------------------------------------- */

/* Enum name of weight w: its checkpoint key without the graph's prefix as
 * an identifier, W_input_blocks_1_0_in_layers_2_weight (made unique with
 * a suffix when two keys map to one name). */
static const char *weight_ident(const Graph *g, const Node *w) {
    static char **names;
    static const Graph *for_graph;
    if (for_graph != g) { /* names for this graph, built once */
        if (names) {
            for (int i = 0; names[i]; i++) free(names[i]);
            free(names);
        }
        names = ldm_xcalloc((size_t)g->n_weights + 1, sizeof *names);
        for (int i = 0; i < g->n_weights; i++) {
            const char *key = key_of(g, g->weights[i]);
            char *id = ldm_xasprintf("W_%s", key);
            for (char *p = id + 2; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))) *p = '_';
            for (int j = 0, clash = 1; clash; j++) {
                clash = 0;
                for (int k = 0; k < i && !clash; k++) clash = !strcmp(names[k], id);
                if (clash) {
                    char *base = ldm_xasprintf("W_%s", key);
                    for (char *p = base + 2; *p; p++)
                        if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))) *p = '_';
                    free(id);
                    id = ldm_xasprintf("%s_%d", base, j + 2);
                    free(base);
                }
            }
            names[i] = id;
        }
        for_graph = g;
    }
    return names[w->weight_index];
}

/* C expression for source s of node n inside forward(). */
static void src_ref(const Graph *g, const Node *n, int s, char *buf, size_t size) {
    const Node *x = n->src[s], *w = weight_of(x);
    if (w && src_is_lw(n, s)) snprintf(buf, size, "w[%s]", weight_ident(g, w));
    else if (w) snprintf(buf, size, "(const float *)w[%s].p", weight_ident(g, w));
    else snprintf(buf, size, "v%d", x->id);
}

static void emit_call(const Graph *g, const Node *n, FILE *fp) {
    char b[256], kn[64];
    node_kernel_name(n, kn, sizeof kn);
    E("    /* %%%d %s @%s%s%s */\n", n->id, kn, loc_str(n->loc), n->scope ? " " : "", n->scope ? n->scope : "");
    if (n->op == OPK_RESHAPE) {
        if (weight_of(n)) return; /* a view of a weight: callers use the weight */
        const Node *root = n->src[0];
        while (root->op == OPK_RESHAPE) root = root->src[0];
        E("    %s%s *v%d = v%d;\n", root->op == OPK_INPUT ? "const " : "", ctype(n->dtype), n->id, n->src[0]->id);
        return;
    }
    if (n->storage != n)
        E("    %s *v%d = (%s *)(arena + %lld); /* its part of %%%d */\n", ctype(n->dtype), n->id, ctype(n->dtype),
          (long long)plan_offset(g, n), n->storage->id);
    else
        E("    %s *v%d = (%s *)(arena + %lld);\n", ctype(n->dtype), n->id, ctype(n->dtype), (long long)plan_offset(g, n));
    int fallible = n->op == OPK_EMBEDDING || n->op == OPK_VQ_LOOKUP;
    char kid[64];
    E("    LDM_PROFILE_NODE(%d, \"%s\", %.17g, %sn%d_%s(", n->id, kn, node_flops(n), fallible ? "if (" : "", n->id,
      kernel_ident(n, kid, sizeof kid));
    for (int s = 0; s < n->nsrc; s++) {
        src_ref(g, n, s, b, sizeof b);
        E("%s, ", b);
    }
    E("v%d", n->id);
    if (n->scratch_bytes) E(", (float *)(arena + %lld)", (long long)g->plan[n->scratch_buf].offset);
    if (kernel_dyn(n)) E(", ext");
    E(")%s);\n", fallible ? ") return -1" : "");
}

static void emit_tensor_table(const Graph *g, const char *name, Node *const *nodes, const Output *outs, int count,
                              int is_out, FILE *fp) {
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
        if (w) E("    [%s] =\n", weight_ident(g, n));
        E("    {.name = \"%s\", .dtype = %s, .flags = %s, .ndim = %d, .shape = {", nm,
          n->dtype == DT_I32 ? "LDM_I32" : "LDM_F32", flags, n->ndim);
        for (int d = 0; d < n->ndim; d++) E("%s%lld", d ? ", " : "", (long long)n->shape[d]);
        E("}");
        if (node_is_dyn(n)) {
            E(", .dyn = {");
            for (int d = 0; d < n->ndim; d++) E("%s%d", d ? ", " : "", n->dyn[d]);
            E("} /* %s */", shape_str(n, flags, sizeof flags));
        }
        E("},\n");
    }
    if (!count) E("    {.name = \"\"},\n");
    E("};\n");
}

/* What the generated file calls, so that it includes only what it uses. */
static void emit_includes(const Graph *g, FILE *fp) {
    int math = 0, blas = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        switch (g->nodes[i]->op) {
        case OPK_LAYER_NORM:
        case OPK_SILU:
        case OPK_GELU:
        case OPK_QUICK_GELU:
        case OPK_SIGMOID:
        case OPK_TANH:
        case OPK_GEGLU:
        case OPK_SOFTMAX:
        case OPK_TIMESTEP_EMB:
        case OPK_VQ_INDEX: math = 1; break;
        case OPK_MATMUL: blas = 1; break;
        default: break;
        }
    }
    if (math) E("#include <math.h>\n");
    E("#include <stdint.h>\n#include <string.h>\n\n");
    if (blas) E("#include <cblas.h>\n\n");
    E("#include \"model.h\"\n#include \"util.h\"\n\n");
}

/* The FLOPs of one call at run-time extents: each kernel's count at the
 * maxima scales with the extents its result runs over (no contracted dim
 * is a run-time one), and an attention's also with its key length. Terms
 * with the same powers of the extents are summed; the total is scaled like
 * .flops, the count of the graph as written. */
static void emit_flops_at(const Graph *g, const char *sym, FILE *fp) {
    enum { MAXE = 32 };
    typedef struct Term {
        int p[MAXE];             /* power of each extent's ratio to its maximum */
        double f;                /* FLOPs of the kernels with these powers, at the maxima */
    } Term;
    Term *t = ldm_xcalloc((size_t)g->n_nodes + 1, sizeof *t);
    int nt = 0, used[MAXE] = {0};
    double total = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        double f = node_flops(n);
        if (f <= 0) continue;
        Term x = {.f = f};
        for (int d = 0; d < n->ndim; d++)
            if (n->dyn[d] > 0 && n->dyn[d] <= MAXE) x.p[n->dyn[d] - 1]++;
        if (n->op == OPK_ATTENTION && n->src[1]->dyn[1] > 0 && n->src[1]->dyn[1] <= MAXE) x.p[n->src[1]->dyn[1] - 1]++;
        int j = 0;
        while (j < nt && memcmp(t[j].p, x.p, sizeof x.p)) j++;
        if (j == nt) t[nt++] = x;
        else t[j].f += f;
        for (int k = 0; k < MAXE; k++) used[k] |= x.p[k] > 0;
        total += f;
    }
    double nominal = g->nominal_flops > 0 ? g->nominal_flops : graph_flops(g);
    E("\n/* FLOPs per call at run-time extents: each kernel's count at the maxima scales with the\n"
      " * extents its result (and an attention's key length) runs over; scaled like .flops. */\n");
    E("static double %s_flops_at(const int64_t *ext) {\n", sym);
    E("    if (!ext) return %.17g;\n", nominal);
    for (int k = 0; k < g->n_extents && k < MAXE; k++)
        if (used[k])
            E("    const double r%d = (double)ext[%d] / %lld.0; /* %s */\n", k, k, (long long)g->extents[k].max,
              g->extents[k].name);
    E("    const double f = ");
    for (int j = 0; j < nt; j++) {
        E("%s%.17g", j ? "\n                   + " : "", t[j].f);
        for (int k = 0; k < MAXE; k++)
            for (int q = 0; q < t[j].p[k]; q++) E(" * r%d", k);
    }
    if (!nt) E("0.0");
    E(";\n    return %.17g * (f / %.17g);\n}\n", nominal, total > 0 ? total : 1.0);
    free(t);
}

int codegen(const Graph *g, const CodegenInfo *info, FILE *fp) {
    const char *sym = info->symbol ? info->symbol : g->name; /* exported: <sym>_forward, <sym>_model */
    char upper[256];
    size_t k = 0;
    cur_graph = g;
    for (const char *p = g->name; *p && k + 1 < sizeof upper; p++) upper[k++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    upper[k] = 0;
    E("/* ldmc %s | graph %s | config %s | %s | source %s */\n", LDMC_VERSION, info->graph_path,
      info->config_path ? info->config_path : "(none)", info->defines, info->source_hash);
    E("/*\n * Generated by ldmc from %s: do not edit.\n", info->graph_path);
    E(" * Graph '%s': %d nodes, %lld parameters, %.6g GFLOP per call (as written; %.6g after fusion).\n", g->name,
      g->n_nodes, (long long)graph_param_count(g), g->nominal_flops / 1e9, graph_flops(g) / 1e9);
    E(" * Arena: %lld bytes of activations and scratch (the naive sum is %lld).\n", (long long)g->arena_bytes,
      (long long)g->naive_bytes);
    if (g->n_extents) {
        E(" * Run-time extents (ext[k] of forward; shapes, FLOPs and the arena are for their maxima):\n");
        for (int e = 0; e < g->n_extents; e++)
            E(" *   ext[%d] = %s, 1 <= %s <= %lld%s%.0lld (%s)\n", e, g->extents[e].name, g->extents[e].name,
              (long long)g->extents[e].max, g->extents[e].step > 1 ? ", a multiple of " : "",
              g->extents[e].step > 1 ? (long long)g->extents[e].step : 0ll, loc_str(g->extents[e].loc));
    }
    E(" * Entry point: %s_forward(weights, inputs, outputs, arena, ext); tables in %s_model.\n */\n", sym, sym);
    emit_includes(g, fp);
    E("#define %s_ARENA_BYTES %lldu\n", upper, (long long)g->arena_bytes);
    E("#define %s_N_WEIGHTS %d\n\n", upper, g->n_weights);
    E("/* Run one kernel call, timed when LDM_PROFILE is set (runtime/profile.c). */\n");
    E("#define LDM_PROFILE_NODE(id, op, flops, call)                                          \\\n");
    E("    do {                                                                               \\\n");
    E("        const double t0_ = ldm_profiling ? ldm_now() : 0.0;                            \\\n");
    E("        call;                                                                          \\\n");
    E("        if (ldm_profiling) ldm_profile_record(\"%s\", id, op, flops, ldm_now() - t0_); \\\n", g->name);
    E("    } while (0)\n");
    if (g->n_weights) {
        E("\n/* The weights, by checkpoint key (without the prefix \"%s\"): indices into w[]. */\nenum {\n", g->prefix);
        for (int i = 0; i < g->n_weights; i++) E("    %s,\n", weight_ident(g, g->weights[i]));
        E("};\n");
    }

    for (int i = 0; i < g->n_nodes; i++) emit_kernel(g, g->nodes[i], fp);

    E("\n/* ---- entry point ---- */\n\n");
    E("int %s_forward(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena, const int64_t *ext) {\n",
      sym);
    E("    (void)w;\n");
    if (!g->n_extents) E("    (void)ext; /* no run-time extents */\n");
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
        Sz bytes = sz_mul(sz_prod(n, 0, n->ndim), sz_k(4));
        if (!bytes.n) {
            E("    memcpy(out[%d], v%d, %lld); /* output %s */\n", i, n->id, (long long)bytes.k, g->outputs[i].name);
            continue;
        }
        /* ext[] itself, not the kernels' ext_NAME locals */
        char b[256];
        size_t m = (size_t)snprintf(b, sizeof b, "(size_t)%lld", (long long)bytes.k);
        for (int e = 0; e < bytes.n && m < sizeof b; e++) m += (size_t)snprintf(b + m, sizeof b - m, " * ext[%d]", bytes.e[e]);
        E("    memcpy(out[%d], v%d, %s); /* output %s, at run-time size */\n", i, n->id, b, g->outputs[i].name);
    }
    E("    return 0;\n}\n\n");

    emit_tensor_table(g, "weight_table", g->weights, NULL, g->n_weights, 0, fp);
    emit_tensor_table(g, "input_table", g->inputs, NULL, g->n_inputs, 0, fp);
    emit_tensor_table(g, "output_table", NULL, g->outputs, g->n_outputs, 1, fp);
    if (g->n_extents) {
        E("static const LdmExtent extent_table[%d] = {\n", g->n_extents);
        for (int e = 0; e < g->n_extents; e++)
            E("    {.name = \"%s\", .max = %lld, .step = %lld},\n", g->extents[e].name, (long long)g->extents[e].max,
              (long long)g->extents[e].step);
        E("};\n");
    }
    if (g->n_extents) emit_flops_at(g, sym, fp);
    E("\nconst LdmModel %s_model = {\n", sym);
    E("    .name = \"%s\",\n    .banner = \"ldmc %s | graph %s | config %s | %s\",\n", g->name, LDMC_VERSION,
      info->graph_path, info->config_path ? info->config_path : "(none)", info->defines);
    E("    .n_weights = %d,\n    .weights = weight_table,\n", g->n_weights);
    E("    .n_inputs = %d,\n    .inputs = input_table,\n", g->n_inputs);
    E("    .n_outputs = %d,\n    .outputs = output_table,\n", g->n_outputs);
    E("    .arena_bytes = %s_ARENA_BYTES,\n    .flops = %.17g,\n    .n_params = %lld,\n    .forward = %s_forward,\n",
      upper, g->nominal_flops > 0 ? g->nominal_flops : graph_flops(g), (long long)graph_param_count(g), sym);
    if (g->n_extents)
        E("    .n_extents = %d,\n    .extents = extent_table,\n    .flops_at = %s_flops_at,\n", g->n_extents, sym);
    E("};\n");
    E("\n#ifdef LDM_RUNNER_MAIN\nint main(int argc, char **argv) { return ldm_runner_main(&%s_model, argc, argv); }\n#endif\n",
      sym);
    return ferror(fp) ? ldm_fail("write error while generating C") : 0;
}
