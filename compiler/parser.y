/*
 * parser.y - grammar of the ldmc graph DSL (pure, reentrant, with
 * locations, no conflicts). Actions only build syntax trees.
 *
 *   program   := decl*
 *   decl      := 'import' STRING ';' | 'def' IDENT '(' params ')' block
 *              | 'graph' IDENT block
 *   stmt      := 'let' IDENT '=' expr ';' | IDENT '=' expr ';' | expr ';'
 *              | 'if' expr block ['else' (block | if)] | 'for' IDENT 'in' expr block
 *              | 'scope' expr block | 'return' expr ';' | 'assert' expr [',' expr] ';'
 *              | 'input' IDENT ':' IDENT '[' exprs ']' ';' | 'output' IDENT '=' expr ';'
 *              | 'input' IDENT '=' STRING ':' IDENT '[' exprs ']' ';'   (variable IDENT, name STRING)
 *              | 'output' STRING '=' expr ';'   (STRING interpolated: names computed in loops)
 *              | 'param' IDENT '=' expr ';' | 'param' IDENT '<=' expr ['step' expr] ';'
 *              | 'prefix' expr ';' | block
 *   ('step' is a word only there: a range(..., step=2) argument keeps its name)
 *   expr      := the usual operators, a ? b : c, calls f(x, k=v), a[i], a[i:j], a.b
 */
%define api.pure full
%define api.prefix {ldmc_yy}
%define parse.error verbose
%locations
%expect 0

%code requires {
#include "ldmc.h"
#include "parse_internal.h"
}

%param {void *scanner}
%parse-param {struct LexExtra *extra}

%union {
    int64_t ival;
    double fval;
    char *str;
    Ast *ast;
}

%code {
#include <stdlib.h>
#include <string.h>
#define YYSTYPE LDMC_YYSTYPE
#define YYLTYPE LDMC_YYLTYPE
#include "lexer.h"

static void ldmc_yyerror(LDMC_YYLTYPE *loc, void *scanner, struct LexExtra *x, const char *msg) {
    (void)scanner;
    if (!x->failed) diag_error(lex_loc(x, loc), "%s", msg);
    x->failed = 1;
}

#define LOC(l) lex_loc(extra, &(l))

static Ast *node(AstKind k, SrcLoc loc) { return ast_new(k, loc); }

static Ast *binary(int op, Ast *a, Ast *b, SrcLoc loc) {
    Ast *n = ast_new(A_BINARY, loc);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static Ast *named(AstKind k, SrcLoc loc, char *name, Ast *a) {
    Ast *n = ast_new(k, loc);
    n->name = name;
    n->a = a;
    return n;
}

/* Move the items of a temporary list node into dst, freeing the holder. */
static void take_items(Ast *dst, Ast *holder) {
    if (!holder) return;
    dst->items = holder->items;
    holder->items = (AstList){0};
    ast_free(holder);
}
}

%token <ival> INT "integer"
%token <fval> FLOAT "number"
%token <str> IDENT "identifier" STRING "string"
%token LET "let" DEF "def" GRAPH "graph" IMPORT "import" RETURN "return" IF "if" ELSE "else"
%token FOR "for" IN "in" SCOPE "scope" ASSERT "assert" INPUT "input" OUTPUT "output"
%token PARAM "param" PREFIX "prefix" TRUE "true" FALSE "false" NULL_ "null"
%token EQ "==" NE "!=" LE "<=" GE ">=" AND "and" OR "or" POW "**" FLOORDIV "//"

%type <ast> decl params param_list param block stmts stmt else_part expr postfix primary
%type <ast> args arg_list arg exprs expr_list opt_expr

%destructor { free($$); } <str>
%destructor { ast_free($$); } <ast>

%right '?' ':'
%left OR
%left AND
%precedence '!'
%nonassoc EQ NE '<' '>' LE GE IN
%left '+' '-'
%left '*' '/' FLOORDIV '%'
%precedence UMINUS
%right POW

%start program

%%

program
    : %empty
    | program decl          { ast_push(extra->out, $2); }
    ;

decl
    : IMPORT STRING ';'     { $$ = node(D_IMPORT, LOC(@1)); $$->str = $2; }
    | DEF IDENT '(' params ')' block
                            { $$ = node(D_DEF, LOC(@2)); $$->name = $2; take_items($$, $4); $$->b = $6; }
    | GRAPH IDENT block     { $$ = node(D_GRAPH, LOC(@2)); $$->name = $2; $$->b = $3; }
    ;

params
    : %empty                { $$ = node(A_LIST, LOC(@$)); }
    | param_list            { $$ = $1; }
    ;

param_list
    : param                 { $$ = node(A_LIST, LOC(@1)); ast_push(&$$->items, $1); }
    | param_list ',' param  { $$ = $1; ast_push(&$$->items, $3); }
    ;

param
    : IDENT                 { $$ = named(D_PARAM, LOC(@1), $1, NULL); }
    | IDENT '=' expr        { $$ = named(D_PARAM, LOC(@1), $1, $3); }
    ;

block
    : '{' stmts '}'         { $$ = $2; $$->loc = LOC(@1); }
    ;

stmts
    : %empty                { $$ = node(S_BLOCK, LOC(@$)); }
    | stmts stmt            { $$ = $1; ast_push(&$$->items, $2); }
    ;

stmt
    : LET IDENT '=' expr ';'    { $$ = named(S_LET, LOC(@2), $2, $4); }
    | IDENT '=' expr ';'        { $$ = named(S_ASSIGN, LOC(@1), $1, $3); }
    | expr ';'                  { $$ = node(S_EXPR, LOC(@1)); $$->a = $1; }
    | IF expr block else_part   { $$ = node(S_IF, LOC(@1)); $$->a = $2; $$->b = $3; $$->c = $4; }
    | FOR IDENT IN expr block   { $$ = named(S_FOR, LOC(@1), $2, $4); $$->b = $5; }
    | SCOPE expr block          { $$ = node(S_SCOPE, LOC(@1)); $$->a = $2; $$->b = $3; }
    | RETURN expr ';'           { $$ = node(S_RETURN, LOC(@1)); $$->a = $2; }
    | ASSERT expr ';'           { $$ = node(S_ASSERT, LOC(@2)); $$->a = $2; }
    | ASSERT expr ',' expr ';'  { $$ = node(S_ASSERT, LOC(@2)); $$->a = $2; $$->b = $4; }
    | INPUT IDENT ':' IDENT '[' exprs ']' ';'
                                { $$ = named(S_INPUT, LOC(@2), $2, NULL); $$->str = $4; take_items($$, $6); }
    | INPUT IDENT '=' STRING ':' IDENT '[' exprs ']' ';'
                                {
                                  $$ = named(S_INPUT, LOC(@2), $2, NULL); $$->str = $6; take_items($$, $8);
                                  $$->b = node(A_STR, LOC(@4)); $$->b->str = $4;
                                }
    | OUTPUT IDENT '=' expr ';' { $$ = named(S_OUTPUT, LOC(@2), $2, $4); }
    | OUTPUT STRING '=' expr ';'
                                {
                                  $$ = named(S_OUTPUT, LOC(@2), NULL, $4);
                                  $$->b = node(A_STR, LOC(@2)); $$->b->str = $2;
                                }
    | PARAM IDENT '=' expr ';'  { $$ = named(S_PARAM, LOC(@2), $2, $4); }
    | PARAM IDENT LE expr ';'   { $$ = named(S_EXTENT, LOC(@2), $2, $4); }
    | PARAM IDENT LE expr IDENT expr ';'
                                {
                                  if (strcmp($5, "step") != 0) {
                                      diag_error(LOC(@5), "expected 'step' or ';' after the maximum of param %s, got '%s'",
                                                 $2, $5);
                                      extra->failed = 1;
                                      /* YYERROR pops the rule's symbols without their destructors */
                                      free($2);
                                      ast_free($4);
                                      free($5);
                                      ast_free($6);
                                      YYERROR;
                                  }
                                  free($5);
                                  $$ = named(S_EXTENT, LOC(@2), $2, $4);
                                  $$->b = $6;
                                }
    | PREFIX expr ';'           { $$ = node(S_PREFIX, LOC(@1)); $$->a = $2; }
    | block                     { $$ = $1; }
    ;

else_part
    : %empty                    { $$ = NULL; }
    | ELSE block                { $$ = $2; }
    | ELSE IF expr block else_part
                                { $$ = node(S_IF, LOC(@2)); $$->a = $3; $$->b = $4; $$->c = $5; }
    ;

expr
    : postfix                   { $$ = $1; }
    | expr '?' expr ':' expr    { $$ = node(A_COND, LOC(@2)); $$->a = $1; $$->b = $3; $$->c = $5; }
    | expr OR expr              { $$ = binary(OP_OR, $1, $3, LOC(@2)); }
    | expr AND expr             { $$ = binary(OP_AND, $1, $3, LOC(@2)); }
    | expr EQ expr              { $$ = binary(OP_EQ, $1, $3, LOC(@2)); }
    | expr NE expr              { $$ = binary(OP_NE, $1, $3, LOC(@2)); }
    | expr '<' expr             { $$ = binary('<', $1, $3, LOC(@2)); }
    | expr '>' expr             { $$ = binary('>', $1, $3, LOC(@2)); }
    | expr LE expr              { $$ = binary(OP_LE, $1, $3, LOC(@2)); }
    | expr GE expr              { $$ = binary(OP_GE, $1, $3, LOC(@2)); }
    | expr IN expr              { $$ = binary(OP_IN, $1, $3, LOC(@2)); }
    | expr '+' expr             { $$ = binary('+', $1, $3, LOC(@2)); }
    | expr '-' expr             { $$ = binary('-', $1, $3, LOC(@2)); }
    | expr '*' expr             { $$ = binary('*', $1, $3, LOC(@2)); }
    | expr '/' expr             { $$ = binary('/', $1, $3, LOC(@2)); }
    | expr FLOORDIV expr        { $$ = binary(OP_FLOORDIV, $1, $3, LOC(@2)); }
    | expr '%' expr             { $$ = binary('%', $1, $3, LOC(@2)); }
    | expr POW expr             { $$ = binary(OP_POW, $1, $3, LOC(@2)); }
    | '-' expr %prec UMINUS     { $$ = node(A_UNARY, LOC(@1)); $$->op = '-'; $$->a = $2; }
    | '!' expr                  { $$ = node(A_UNARY, LOC(@1)); $$->op = '!'; $$->a = $2; }
    ;

postfix
    : primary                   { $$ = $1; }
    | postfix '(' args ')'      { $$ = node(A_CALL, LOC(@1)); $$->a = $1; take_items($$, $3); }
    | postfix '[' expr ']'      { $$ = node(A_INDEX, LOC(@2)); $$->a = $1; $$->b = $3; }
    | postfix '[' opt_expr ':' opt_expr ']'
                                { $$ = node(A_SLICE, LOC(@2)); $$->a = $1; $$->b = $3; $$->c = $5; }
    | postfix '.' IDENT         { $$ = named(A_MEMBER, LOC(@3), $3, $1); }
    ;

opt_expr
    : %empty                    { $$ = NULL; }
    | expr                      { $$ = $1; }
    ;

primary
    : INT                       { $$ = node(A_INT, LOC(@1)); $$->ival = $1; }
    | FLOAT                     { $$ = node(A_FLOAT, LOC(@1)); $$->fval = $1; }
    | STRING                    { $$ = node(A_STR, LOC(@1)); $$->str = $1; }
    | TRUE                      { $$ = node(A_BOOL, LOC(@1)); $$->ival = 1; }
    | FALSE                     { $$ = node(A_BOOL, LOC(@1)); $$->ival = 0; }
    | NULL_                     { $$ = node(A_NULL, LOC(@1)); }
    | IDENT                     { $$ = named(A_IDENT, LOC(@1), $1, NULL); }
    | '[' exprs ']'             { $$ = $2; $$->loc = LOC(@1); }
    | '(' expr ')'              { $$ = $2; }
    ;

exprs
    : %empty                    { $$ = node(A_LIST, LOC(@$)); }
    | expr_list                 { $$ = $1; }
    | expr_list ','             { $$ = $1; }
    ;

expr_list
    : expr                      { $$ = node(A_LIST, LOC(@1)); ast_push(&$$->items, $1); }
    | expr_list ',' expr        { $$ = $1; ast_push(&$$->items, $3); }
    ;

args
    : %empty                    { $$ = node(A_LIST, LOC(@$)); }
    | arg_list                  { $$ = $1; }
    ;

arg_list
    : arg                       { $$ = node(A_LIST, LOC(@1)); ast_push(&$$->items, $1); }
    | arg_list ',' arg          { $$ = $1; ast_push(&$$->items, $3); }
    ;

arg
    : expr                      { $$ = $1; }
    | IDENT '=' expr            { $$ = named(A_KWARG, LOC(@1), $1, $3); }
    ;

%%

int parse_file(SrcFile *f, AstList *out) {
    struct LexExtra x = {f, out, 0};
    yyscan_t scanner;
    if (ldmc_yylex_init_extra(&x, &scanner) != 0) return ldm_fail("%s: cannot start the lexer", f->path);
    YY_BUFFER_STATE buf = ldmc_yy_scan_bytes(f->text, (int)f->len, scanner);
    int rc = ldmc_yyparse(scanner, &x);
    ldmc_yy_delete_buffer(buf, scanner);
    ldmc_yylex_destroy(scanner);
    return (rc != 0 || x.failed) ? -1 : 0;
}
