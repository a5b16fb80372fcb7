/*
 * ldmc.h - the one header of the ldmc compiler: source locations and
 * diagnostics, the DSL syntax tree, the graph IR, and the passes over it.
 * Sections are named after the file that owns them.
 *
 * Pipeline: lexer.l/parser.y build an Ast from a .graph file (plus its
 * imports); eval.c interprets that Ast against a model config and builds a
 * Graph of tensor ops (every shape inferred and checked as it is built);
 * the passes transform the Graph, one file each (dce.c, cse.c, fuse.c,
 * select.c, views.c, plan.c), in the order driver.c's pass table gives;
 * codegen.c writes one C file; driver.c runs the whole thing and, on request,
 * the C compiler. Files depend on each other in that order only: a pass uses
 * graph.c and diag.c, never another pass; codegen reads what the passes left
 * (kernel choices, the plan table).
 */
#ifndef LDMC_H
#define LDMC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "kernel_sizes.h"
#include "util.h"

#define LDMC_VERSION "0.1.0"

/* ===================================================================== *
 * diag.c - source files and diagnostics
 * ===================================================================== */

/* A source file the compiler has read (kept for the caret diagnostics). */
typedef struct SrcFile {
    char *path;          /* as given / as resolved for imports */
    char *text;          /* whole contents, NUL-terminated */
    size_t len;          /* length of text */
} SrcFile;

/* A position in a source file (1-based line and column). */
typedef struct SrcLoc {
    SrcFile *file;       /* NULL for compiler-made things */
    int line, col;       /* first character */
    int end_col;         /* one past the last character on the first line */
} SrcLoc;

SrcFile *src_load(const char *path);        /* NULL + ldm_fail on error */
SrcFile *src_from_string(const char *name, const char *text);
void src_free(SrcFile *f);

/* Report "file:line:col: error: msg", the source line and a caret. The
 * message goes to ldm_fail() so library callers can return it; the full
 * text (with source line) is what ldm_last_error() gives. Returns -1. */
int diag_error(SrcLoc loc, const char *fmt, ...) LDM_PRINTF(2, 3);
/* Append a "note:" (e.g. the call chain) to the last error. */
void diag_note(SrcLoc loc, const char *fmt, ...) LDM_PRINTF(2, 3);
/* Append to out (a string of n bytes, capacity cap) the source excerpt of
 * a diagnostic: "\n NNNNN | <line>\n       | " and a caret under column
 * col, then width - 1 '~'. line is the line's text (len bytes, no newline);
 * col counts bytes, or characters (UTF-8 sequences) when chars. Returns
 * the new length. */
size_t diag_excerpt(char *out, size_t cap, size_t n, int line_no, const char *line, int len, int col, int width,
                    int chars);
/* "file:line" of a location ("<builtin>" when none), in a static buffer
 * rotated among a few slots so several can appear in one printf. */
const char *loc_str(SrcLoc loc);

/* ===================================================================== *
 * ast.c, parser.y, lexer.l, program.c - the DSL syntax tree and loading
 * ===================================================================== */

typedef enum AstKind {
    /* expressions */
    A_INT,        /* ival */
    A_FLOAT,      /* fval */
    A_STR,        /* str (may contain {name} interpolations) */
    A_BOOL,       /* ival 0/1 */
    A_NULL,       /* null */
    A_IDENT,      /* name */
    A_LIST,       /* [items] */
    A_CALL,       /* a(items); items may be A_KWARG */
    A_KWARG,      /* name = a (only inside a call) */
    A_INDEX,      /* a[b] */
    A_SLICE,      /* a[b:c], b and/or c may be NULL */
    A_MEMBER,     /* a.name */
    A_UNARY,      /* op a: '-' or '!' */
    A_BINARY,     /* a op b */
    A_COND,       /* a ? b : c */
    /* statements */
    S_LET,        /* let name = a; */
    S_ASSIGN,     /* name = a; */
    S_EXPR,       /* a; */
    S_IF,         /* if a block(b) else c (c: S_IF, S_BLOCK or NULL) */
    S_FOR,        /* for name in a block(b) */
    S_SCOPE,      /* scope a block(b): weight-name prefix */
    S_RETURN,     /* return a; */
    S_ASSERT,     /* assert a, b; */
    S_INPUT,      /* input name: dtype(str) [items];  (b: A_STR, the input's name when it is not `name`) */
    S_OUTPUT,     /* output name = a;  (name NULL: b, an A_STR, gives it) */
    S_PARAM,      /* param name = a; (overridable with -D) */
    S_EXTENT,     /* param name <= a [step b]; a run-time extent of at most a (-D overrides a) */
    S_PREFIX,     /* prefix a; (checkpoint key prefix of the graph) */
    S_BLOCK,      /* { items } */
    /* top level */
    D_DEF,        /* def name(items: A_PARAM) block(b) */
    D_PARAM,      /* a formal parameter: name [= a] */
    D_GRAPH,      /* graph name block(b) */
    D_IMPORT,     /* import str; */
} AstKind;

/* Binary/unary operator codes used in Ast.op (besides single chars). */
enum {
    OP_EQ = 256, OP_NE, OP_LE, OP_GE, OP_AND, OP_OR, OP_IN, OP_FLOORDIV, OP_POW,
};

typedef struct Ast Ast;
typedef struct AstList {
    Ast **v;             /* items */
    int n, cap;          /* count, capacity */
} AstList;

struct Ast {
    AstKind kind;        /* what this is */
    SrcLoc loc;          /* where it starts */
    int op;              /* A_UNARY / A_BINARY operator */
    int64_t ival;        /* A_INT, A_BOOL */
    double fval;         /* A_FLOAT */
    char *name;          /* identifier / member / keyword / def / graph name */
    char *str;           /* A_STR, S_INPUT dtype, D_IMPORT path */
    Ast *a, *b, *c;      /* children, meaning per kind (see AstKind) */
    AstList items;       /* list items, call args, block statements, params */
};

Ast *ast_new(AstKind kind, SrcLoc loc);
void ast_push(AstList *l, Ast *item);
void ast_free(Ast *a);

/* A parsed program: top-level declarations of one file and its imports. */
typedef struct Program {
    SrcFile **files;     /* every file read (main file first) */
    int n_files;
    AstList decls;       /* D_DEF and D_GRAPH, imports already expanded */
} Program;

/* Parse `path` and, recursively, the files it imports (paths relative to
 * the importing file; each file once). NULL + diagnostic on error. */
Program *program_parse(const char *path);
/* Parse from memory (tests); imports resolve relative to the cwd. */
Program *program_parse_string(const char *name, const char *text);
void program_free(Program *p);

/* Internal to the parser: parse one file's text into a list of decls. */
int parse_file(SrcFile *f, AstList *out);

/* ===================================================================== *
 * graph.c - the graph IR
 * ===================================================================== */

#define MAX_DIMS 6
#define MAX_SRC 6

typedef enum DType {
    DT_F32,   /* float32 */
    DT_I32,   /* int32 (token ids, code indices) */
} DType;

/* Every op of the IR. Shapes are NCHW for images, [B, T, C] for
 * sequences; `x` is src[0], `w` src[1], `b` src[2] unless said otherwise. */
typedef enum OpKind {
    OPK_INPUT,        /* graph input (name) */
    OPK_WEIGHT,       /* checkpoint tensor (name = full key) */
    OPK_CONV2D,       /* y = conv(x[N,C,H,W], w[O,C,kh,kw]) + b[O]; stride, pad t/b/l/r */
    OPK_LINEAR,       /* y[..., O] = x[..., I] w[O,I]^T (+ b[O]) */
    OPK_MATMUL,       /* y[..., M, N] = a[..., M, K] b[..., K, N] (b transposed if trans_b) */
    OPK_GROUP_NORM,   /* GroupNorm over [C/groups, H, W] per sample, affine w,b */
    OPK_LAYER_NORM,   /* LayerNorm over the last dim, affine w,b */
    OPK_SILU,         /* x * sigmoid(x) */
    OPK_GELU,         /* 0.5 x (1 + erf(x / sqrt 2)) */
    OPK_QUICK_GELU,   /* x * sigmoid(1.702 x) */
    OPK_SIGMOID,      /* 1 / (1 + exp(-x)) */
    OPK_RELU,         /* max(x, 0) */
    OPK_TANH,         /* tanh(x) */
    OPK_GEGLU,        /* [..., 2D] -> a * gelu(g), a = first D, g = second D */
    OPK_SOFTMAX,      /* softmax over the last dim */
    OPK_ATTENTION,    /* softmax(q k^T * scale [+ causal]) v, heads = contiguous chunks */
    OPK_UPSAMPLE,     /* nearest-neighbour upsampling of H and W by `factor` */
    OPK_AVGPOOL,      /* average pooling of H and W over factor x factor windows, stride factor */
    OPK_ADD,          /* a + b (numpy broadcasting) */
    OPK_SUB,          /* a - b (numpy broadcasting) */
    OPK_MUL,          /* a * b (numpy broadcasting) */
    OPK_SCALE,        /* x * alpha + beta */
    OPK_CONCAT,       /* concatenation of all srcs along axis */
    OPK_TIMESTEP_EMB, /* [B] -> [B, dim]: [cos(t f), sin(t f)], f_i = exp(-ln(max_period) i / half) */
    OPK_EMBEDDING,    /* table[V, D], ids (I32) -> [..ids, D] */
    OPK_RESHAPE,      /* same data, new shape (a view) */
    OPK_PERMUTE,      /* transpose dims by perm (a copy) */
    OPK_SLICE,        /* [start, end) along axis (a copy) */
    OPK_VQ_INDEX,     /* z[B,C,H,W], codebook[K,C] -> I32 [B,H,W] nearest row */
    OPK_VQ_LOOKUP,    /* codebook[K,C], idx I32 [B,H,W] -> [B,C,H,W] */
    OPK_TAKE_ARGMAX,  /* x[B,T,C], ids I32 [B,T] -> [B,C]: x[b, first t of the largest ids[b, t]] */
    OPK_COUNT
} OpKind;

/* Printable op names ("conv2d", ...), indexed by OpKind. */
extern const char *const op_names[OPK_COUNT];

/* Activations fused into the kernel that produces a value. */
enum {
    ACT_NONE = 0,
    ACT_SILU = 1,     /* GROUP_NORM+silu */
    ACT_GEGLU = 2,    /* LINEAR+geglu: the result has half the features */
    ACT_RELU = 3,     /* CONV2D+relu: max(., 0) after the epilogue's sums (bias, rowadd, residual) */
};

/* A run-time extent: a param whose value is given when the generated code
 * runs (`param T <= 154 step 77;`), 1 <= value <= max, a multiple of step.
 * Shapes hold the maximum; Node.dyn says which dims scale with which extent. */
typedef struct Extent {
    char *name;                  /* the param's name ("B", "T") */
    int64_t max;                 /* largest value (what every buffer is planned for) */
    int64_t step;                /* the value is a multiple of this (1: any) */
    SrcLoc loc;                  /* the `param` statement */
} Extent;

typedef struct Graph Graph;
typedef struct Node Node;
struct Node {
    int id;                      /* assigned once when the node is built (creation order), never reused or
                                    renumbered: a note naming %id names this node after every pass */
    OpKind op;                   /* what it computes */
    DType dtype;                 /* element type of the result */
    int ndim;                    /* rank of the result */
    int64_t shape[MAX_DIMS];     /* result shape (of a run-time dim: its maximum) */
    int8_t dyn[MAX_DIMS];        /* 0: dim d is static; k + 1: it is run-time, extent k of the graph, and
                                    its value is shape[d] / extents[k].max * (value of extent k) */
    Graph *graph;                /* the graph it belongs to (its extents table) */
    Node *src[MAX_SRC];          /* operands */
    int nsrc;                    /* number of operands */
    char *name;                  /* INPUT: input name; WEIGHT: full checkpoint key */
    char *scope;                 /* weight scope when built (for dumps), may be NULL */
    SrcLoc loc;                  /* DSL location that built it */
    char *prov;                  /* provenance: the chain of graph-file calls that built it,
                                    "unet.graph:74 ResBlock > nn.graph:78 Conv > nn.graph:12" */
    /* op parameters (meaning per op; unused ones are zero) */
    int stride[2];               /* CONV2D: stride h, w */
    int pad[4];                  /* CONV2D: top, bottom, left, right */
    int groups;                  /* GROUP_NORM */
    int heads;                   /* ATTENTION */
    int causal;                  /* ATTENTION: mask j > i */
    int trans_b;                 /* MATMUL */
    int axis;                    /* CONCAT, SLICE */
    int factor;                  /* UPSAMPLE */
    int perm[MAX_DIMS];          /* PERMUTE */
    int64_t start, end;          /* SLICE */
    double eps;                  /* GROUP_NORM, LAYER_NORM */
    double alpha, beta;          /* SCALE: x*alpha+beta; ATTENTION: alpha = scale */
    double max_period;           /* TIMESTEP_EMB */
    int weight_index;            /* WEIGHT: index in the weight table */
    /* fusion (fuse.c) and kernel choice (select_kernels) */
    int act;                     /* ACT_*: activation applied to the result inside this kernel */
    int ep_rowadd;               /* CONV2D: 1 + index in src of a [B, C] tensor added per (sample, channel); 0 = none */
    int ep_residual;             /* CONV2D, LINEAR: 1 + index in src of a tensor added to the result; 0 = none */
    int pro_lnorm;               /* LINEAR: 1 + index in src of LayerNorm's weight (its bias follows): the input
                                    rows are layer-normalised (eps) while the GEMM packs them; 0 = none */
    int pro_upsample;            /* CONV2D: 2 = its input is src[0] upsampled (nearest, x2), which the
                                    kernel reads as the low-resolution src[0] (upsample_nearest+conv2d,
                                    Winograd sub-pixel phases); 0 = none */
    int algo;                    /* CONV2D: LdmConvAlgo (runtime/kernels.h); -1 until the select pass */
    int needs_f32;               /* WEIGHT: some kernel reads it as plain float32 */
    int wlayout;                 /* WEIGHT: LdmWLayout the runtime binds it in: panels when every use is a
                                    GEMM operand that reads them (linear: B, im2col/pointwise conv: A) */
    char *fused;                 /* "silu %7 @nn.graph:56; add %9 @..." : nodes folded into this one */
    double fused_flops;          /* FLOPs of the nodes folded into this one */
    int input_index;             /* INPUT: index in the input table */
    /* filled by passes */
    int n_uses;                  /* number of consumers (+1 per output) */
    int live;                    /* reachable from an output (graph_sweep) */
    int buf;                     /* index in Graph.plan of the buffer holding its result when it owns one,
                                    else -1 (plan.c) */
    int scratch_buf;             /* index in Graph.plan of its scratch workspace, or -1 */
    Node *storage;               /* node whose buffer holds this value (views, and producers writing
                                    straight into a concatenation) */
    int64_t into_offset;         /* bytes from the start of storage's buffer (concatenation parts) */
    int64_t out_gap;             /* floats between one sample's result and the next beyond its own
                                    size (a part of a channel concatenation); 0 = contiguous */
    int64_t scratch_bytes;       /* temporary workspace this op needs (set by the plan) */
};

/* One row of the memory plan: a buffer of the arena and when it is live.
 * The plan dump, the SVG, codegen and the validator all read this table. */
typedef struct PlanBuf {
    Node *node;                  /* the value (a storage root) or the node whose scratch this is */
    int scratch;                 /* 1: the node's scratch workspace; 0: its result buffer */
    int64_t offset;              /* arena byte offset, 64-byte aligned */
    int64_t size;                /* bytes (64-byte aligned) */
    int first, last;             /* schedule positions of the first writer and the last reader
                                    (n_nodes: a graph output, live to the end) */
} PlanBuf;

/* A graph output: a name and the node that computes it. */
typedef struct Output {
    char *name;                  /* output tensor name (e.g. "eps") */
    Node *node;                  /* value */
    SrcLoc loc;                  /* `output` statement */
} Output;

/* A checkpoint tensor the graph declares present but unread
 * (`unused_weight(name, shape)`): e.g. the last block of SD 2's text
 * tower under layer "penultimate". Reported by --stats and --dump. */
typedef struct UnusedWeight {
    char *name;                  /* full checkpoint key */
    int ndim;
    int64_t shape[MAX_DIMS];
} UnusedWeight;

struct Graph {
    char *name;                  /* graph name from `graph NAME {` */
    char *prefix;                /* checkpoint key prefix from `prefix "..."` */
    Node **nodes;                /* all nodes, in schedule order */
    int n_nodes, cap_nodes;
    Node **inputs;               /* INPUT nodes, in declaration order */
    int n_inputs;
    Node **weights;              /* live WEIGHT nodes, in first-use order */
    int n_weights;
    Output *outputs;             /* outputs, in declaration order */
    int n_outputs;
    int next_id;                 /* id of the next node built (ids are never reused) */
    PlanBuf *plan;               /* the memory plan, by first use (plan.c) */
    int n_plan;
    int64_t arena_bytes;         /* set by plan.c */
    int64_t naive_bytes;         /* sum of all activation sizes (for reports) */
    const char *plan_strategy;   /* the placement strategy that won */
    int64_t plan_sizes[3];       /* arena of first-fit, best-fit, size-ordered */
    double nominal_flops;        /* FLOPs of the graph as written, before fusion */
    Extent *extents;             /* run-time extents, in declaration order (index k: Node.dyn k + 1) */
    int n_extents;
    UnusedWeight *unused;        /* tensors a checkpoint holds that the graph does not read, declaration order */
    int n_unused;
};

Graph *graph_new(const char *name);
void graph_free(Graph *g);
/* Append a node; the caller fills op params and calls node_infer(). */
Node *graph_add(Graph *g, OpKind op, SrcLoc loc);
/* Infer and check the shape of n from its sources and params. On a
 * mismatch records a diagnostic at n->loc and returns -1. */
int node_infer(Node *n);
int64_t node_numel(const Node *n);
int64_t node_bytes(const Node *n);
/* Floating-point operations (multiply-add = 2) of one node, including the
 * ops fused into it; node_op_flops counts its own op only. */
double node_flops(const Node *n);
double node_op_flops(const Node *n);
/* "[2,320,64,64]" into buf; a run-time dim as NAME<=MAX, or C*NAME<=MAX
 * for C times extent NAME ("[B<=2,4,64,64]", "[B<=2,T<=154,768]"). */
const char *shape_str(const Node *n, char *buf, size_t size);
/* "conv2d+rowadd+residual": the op chain a (fused) node computes. */
const char *node_kernel_name(const Node *n, char *buf, size_t size);
/* Is n one of g's outputs? */
int graph_is_output(const Graph *g, const Node *n);
/* Let every reader of old (and every output) read repl instead. */
void graph_replace_uses(Graph *g, Node *old, Node *repl);
/* Drop the nodes no output reaches (inputs stay: they are the interface),
 * then recount uses (n_uses) and collect the live weights in first-use
 * order. Ids are kept. */
void graph_sweep(Graph *g);

/* Add extent `name` (max >= 1, step dividing max); its index. */
int graph_add_extent(Graph *g, const char *name, int64_t max, int64_t step, SrcLoc loc);
/* Dim d of n when the extents have the values val[] (NULL: their maxima). */
int64_t node_dim_at(const Node *n, int d, const int64_t *val);
/* 1 if any dim of n is run-time. */
int node_is_dyn(const Node *n);

/* Totals for reports. */
int64_t graph_param_count(const Graph *g);
/* Elements of the declared unused weights (Graph.unused). */
int64_t graph_unused_count(const Graph *g);
double graph_flops(const Graph *g);

/* ===================================================================== *
 * modelcfg.c - what a model config means
 * ===================================================================== */

/* The facts of a CompVis config that graphs and executables need, derived
 * once (with the reference classes' defaults). Strings point into the
 * config tree (or are literals). */
typedef struct ModelFacts {
    int f;                       /* first-stage downsampling factor 2^(len(ddconfig.ch_mult) - 1) */
    const CfgNode *ch_mult;      /* ddconfig.ch_mult (for messages about f) */
    int latent_channels;         /* diffusion latent channels (model.params.channels) */
    int unet_in, unet_out;       /* UNet in/out channels */
    double linear_start, linear_end; /* DDPM beta schedule */
    const char *beta_schedule;   /* "linear" unless the config says otherwise */
    const char *parameterization; /* "eps" unless the config says otherwise */
    int timesteps;               /* training timesteps (1000) */
    double scale_factor;         /* latent scale factor (1.0 when absent) */
    int scale_by_std;            /* the checkpoint's scale_factor replaces it */
    const char *conditioning_key; /* "crossattn", "hybrid", "concat", "adm" or "none" */
    const char *first_stage;     /* "kl" or "vq" */
    const char *cond_stage;      /* cond_stage_config target, "__is_unconditional__", or "" */
    const char *cond_kind;       /* "text" (FrozenCLIPEmbedder), "class" (ClassEmbedder), "none", "other" */
    int context_length;          /* text encoder positions (max_length, 77), 0 without a text encoder */
    int unet_context;            /* context tokens the UNet cross-attends to: context_length for text,
                                    1 for a class embedding, 0 for none */
    int context_dim;             /* UNet cross-attention width, 0 without a spatial transformer */
    int vocab_size;              /* text encoder vocabulary, 0 without one */
    int n_classes;               /* ClassEmbedder classes, 0 otherwise */
    const char *openclip_layer;  /* FrozenOpenCLIPEmbedder's layer ("last" or "penultimate"), NULL otherwise */
    const char *format;          /* "compvis" (unet_config, cond_stage_config) or "sgm" (Stability-AI
                                    generative-models: network_config, conditioner_config, denoiser_config) */
    const char *unet_config_key; /* "unet_config" or "network_config": model.params key of the UNet */
    int unet_spatial;            /* the UNet's attention blocks are SpatialTransformers (cross-attention) */
    int adm_in_channels;         /* width of the UNet's vector conditioning y (label_emb), 0 without */
    int n_text_embedders;        /* sgm: conditioner embedders whose input_key is txt (CompVis text: 1) */
} ModelFacts;

/* Derive the facts from a config root; 0, or -1 with a located message. */
int model_facts(const CfgNode *root, ModelFacts *out);
/* The facts as a config map (keys named as the fields; unet_in/unet_out as
 * unet_in_channels/unet_out_channels), for the DSL's model_facts(). */
CfgNode *model_facts_map(const ModelFacts *p);

/* ===================================================================== *
 * eval.c - elaboration: run the DSL program against a config
 * ===================================================================== */

/* A -D NAME=VALUE definition from the command line. */
typedef struct Define {
    char *name;                  /* graph param (H, W, B, ...) or dotted config path */
    char *value;                 /* text of the value */
} Define;

typedef struct BuildOptions {
    const char *config_path;     /* --config YAML (may be NULL) */
    Define *defines;             /* -D definitions, in order */
    int n_defines;
} BuildOptions;

/* Build the graph of `prog` (its only `graph` declaration). NULL + diagnostic. */
Graph *graph_build(Program *prog, const BuildOptions *opt);

/* ===================================================================== *
 * dce.c, cse.c, fuse.c, select.c, views.c, plan.c - the passes
 * ===================================================================== */

/* dce.c: drop what no output reads; renumber nothing. */
void pass_dead_code(Graph *g);
/* cse.c: merge nodes computing the same op on the same operands with the
 * same parameters (e.g. the time embedding's SiLU, once per ResBlock). */
void pass_cse(Graph *g);
/* fuse.c: fold GroupNorm+SiLU, Linear+GEGLU, LayerNorm into the linear
 * layers reading it, and the adds that can become a conv/linear epilogue
 * (time-embedding row add, residual). */
void pass_fuse(Graph *g);
/* select.c: choose the kernel of every heavy node (convolution algorithm)
 * and the storage type and layout of every weight. */
void pass_select_kernels(Graph *g);
/* Whether conv (3x3, padding 1) of up = upsample_nearest(x, 2) can run as
 * one upsample_nearest+conv2d kernel: the Winograd kernel's sub-pixel
 * phases, which the select pass then chooses (fuse.c asks). */
int conv_upsample_fusable(const Node *conv, const Node *up);
/* Bytes of workspace the kernel chosen for n needs, the largest over every
 * run-time value of its extents (planned in the arena like any tensor). */
int64_t kernel_scratch_bytes(const Node *n);
/* The runtime's shape structs of a conv2d / attention node when the extents
 * have the values val (NULL: their maxima). */
LdmConvShape node_conv_shape(const Node *n, const int64_t *val);
LdmAttnShape node_attn_shape(const Node *n, const int64_t *val);
/* views.c: resolve views (RESHAPE) to the node owning their storage, and
 * let the convolution producing the last-computed part of a channel
 * concatenation write straight into the concatenated buffer. */
void pass_views(Graph *g);
/* plan.c: the memory plan (Graph.plan): an arena offset for every buffer
 * by liveness over the schedule; 0, or -1 with the validator's message. */
int pass_plan_memory(Graph *g);
/* Arena byte offset of n's value (its storage root's buffer, plus its
 * place in it for a part written into a concatenation). */
int64_t plan_offset(const Graph *g, const Node *n);
/* Check the plan table against the schedule: every buffer present, live at
 * least from its first writer to its last reader (derived here again from
 * the nodes, not from the table), aligned, inside the arena, and no two
 * buffers live at the same time overlapping. 0 or -1 + message. */
int plan_validate(const Graph *g);

/* ===================================================================== *
 * dump.c - text and Graphviz dumps
 * ===================================================================== */

/* The graph, one node a line (after any pass: the driver's --dump=PASS). */
void dump_graph(const Graph *g, FILE *fp);
/* The same, with "(after PASS)" on its first line. */
void dump_graph_after(const Graph *g, const char *pass, FILE *fp);
/* The memory plan table, a row per buffer, with the views and in-place
 * parts each buffer holds. */
void dump_plan(const Graph *g, FILE *fp);
void dump_dot(const Graph *g, FILE *fp);
/* Arena usage over the schedule as SVG: one rectangle per buffer. */
void dump_memory_svg(const Graph *g, FILE *fp);

/* ===================================================================== *
 * codegen.c - C code generation
 * ===================================================================== */

typedef struct CodegenInfo {
    const char *graph_path;      /* for the banner */
    const char *config_path;     /* for the banner (may be NULL) */
    const char *defines;         /* "H=512 W=512 B=1" for the banner */
    const char *source_hash;     /* hash of the graph sources, for the banner */
    const char *symbol;          /* prefix of the exported <symbol>_forward / <symbol>_model (NULL: the graph name) */
} CodegenInfo;



/* Write the C translation of g. info->symbol (or the graph name) prefixes every exported symbol. */
int codegen(const Graph *g, const CodegenInfo *info, FILE *fp);

#endif
