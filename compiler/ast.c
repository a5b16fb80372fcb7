/*
 * ast.c - syntax tree constructors (the parser's actions call them).
 */
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

Ast *ast_new(AstKind kind, SrcLoc loc) {
    Ast *a = ldm_xcalloc(1, sizeof *a);
    a->kind = kind;
    a->loc = loc;
    return a;
}

void ast_push(AstList *l, Ast *item) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4;
        l->v = ldm_xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = item;
}

void ast_free(Ast *a) {
    if (!a) return;
    ast_free(a->a);
    ast_free(a->b);
    ast_free(a->c);
    for (int i = 0; i < a->items.n; i++) ast_free(a->items.v[i]);
    free(a->items.v);
    free(a->name);
    free(a->str);
    free(a);
}
