/* parse_internal.h - shared between lexer.l and parser.y only. */
#ifndef LDMC_PARSE_INTERNAL_H
#define LDMC_PARSE_INTERNAL_H

#include "ldmc.h"

/* State threaded through the reentrant lexer and the pure parser. */
struct LexExtra {
    SrcFile *file;       /* file being parsed (for locations) */
    AstList *out;        /* where top-level declarations go */
    int failed;          /* a diagnostic has been recorded */
};

/* Convert a bison location into a SrcLoc of the file being parsed. */
SrcLoc lex_loc(struct LexExtra *x, const void *yylloc);
/* Record a lexical error at the current token; returns the error token. */
int lex_error(struct LexExtra *x, const void *yylloc, const char *msg);
/* Decode \" \\ \n \t escapes of a string literal body; NULL if invalid. */
char *lex_unescape(const char *s, int len);

#endif
