/*
 * program.c - loading a program: the main .graph file and, recursively,
 * the files it imports (paths relative to the importing file, each file
 * read once), each parsed by parser.y into one list of declarations.
 */
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

static void program_add_file(Program *p, SrcFile *f) {
    p->files = ldm_xrealloc(p->files, (size_t)(p->n_files + 1) * sizeof *p->files);
    p->files[p->n_files++] = f;
}

/* Same file, by real path where the files exist (lib/../lib/x.graph is
 * lib/x.graph), else by name. */
static int already_read(const Program *p, const char *path) {
    char *real = realpath(path, NULL);
    int found = 0;
    for (int i = 0; i < p->n_files && !found; i++) {
        char *other = real ? realpath(p->files[i]->path, NULL) : NULL;
        found = other ? strcmp(real, other) == 0 : strcmp(p->files[i]->path, path) == 0;
        free(other);
    }
    free(real);
    return found;
}

/* Path of `rel` relative to the directory of `base`. */
static char *resolve_import(const char *base, const char *rel) {
    if (rel[0] == '/') return ldm_xstrdup(rel);
    char *tmp = ldm_xstrdup(base);
    char *dir = dirname(tmp);
    /* fold leading "../" into the directory: models/sd1 + ../common/nn.graph = models/common/nn.graph */
    char *d = ldm_xstrdup(dir);
    while (!strncmp(rel, "../", 3) && strcmp(d, ".") && strcmp(d, "/") && strcmp(d, "..") &&
           (strlen(d) < 3 || strcmp(d + strlen(d) - 3, "/.."))) {
        char *slash = strrchr(d, '/');
        if (slash) *slash = 0;
        else strcpy(d, ".");
        rel += 3;
    }
    char *out = strcmp(d, ".") == 0 ? ldm_xstrdup(rel) : ldm_xasprintf("%s/%s", d, rel);
    free(d);
    free(tmp);
    return out;
}

/* Parse f and splice its imports (depth first, each file once) into p. */
static int load_into(Program *p, SrcFile *f) {
    program_add_file(p, f);
    AstList decls = {0};
    if (parse_file(f, &decls) != 0) {
        for (int i = 0; i < decls.n; i++) ast_free(decls.v[i]);
        free(decls.v);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < decls.n; i++) {
        Ast *d = decls.v[i];
        if (rc == 0 && d->kind == D_IMPORT) {
            char *path = resolve_import(f->path, d->str);
            if (!already_read(p, path)) {
                SrcFile *sub = src_load(path);
                if (!sub) {
                    char why[1024];
                    snprintf(why, sizeof why, "%s", ldm_last_error());
                    rc = diag_error(d->loc, "cannot import '%s': %s", d->str, why);
                } else {
                    rc = load_into(p, sub);
                }
            }
            free(path);
            ast_free(d);
        } else if (d->kind == D_IMPORT) {
            ast_free(d);
        } else {
            ast_push(&p->decls, d);
        }
    }
    free(decls.v);
    return rc;
}

Program *program_parse(const char *path) {
    SrcFile *f = src_load(path);
    if (!f) return NULL;
    Program *p = ldm_xcalloc(1, sizeof *p);
    if (load_into(p, f) != 0) {
        program_free(p);
        return NULL;
    }
    return p;
}

Program *program_parse_string(const char *name, const char *text) {
    Program *p = ldm_xcalloc(1, sizeof *p);
    if (load_into(p, src_from_string(name, text)) != 0) {
        program_free(p);
        return NULL;
    }
    return p;
}

void program_free(Program *p) {
    if (!p) return;
    for (int i = 0; i < p->decls.n; i++) ast_free(p->decls.v[i]);
    free(p->decls.v);
    for (int i = 0; i < p->n_files; i++) src_free(p->files[i]);
    free(p->files);
    free(p);
}
