#!/usr/bin/env python3
"""
gen_unicode_tables.py - writes runtime/unicode_tables.h, the Unicode and HTML
data the CLIP tokenizer (runtime/tokenizer.c) needs, from Python's own tables
(stdlib only: unicodedata, str.lower(), str.isspace(), html, html.entities).

The CLIP reference tokenizer (openai/CLIP clip/simple_tokenizer.py) is Python:
it cleans the prompt with html.unescape(), str.strip() and str.lower(), and
splits it with the `regex` module (\\p{L}, \\p{N}, \\s, IGNORECASE). Taking the
data from the same Python functions makes the C port agree with it code point
by code point (for the Unicode version of this Python, printed in the header).

Run from the repository root after a Python upgrade, and commit the result:

    python3 runtime/gen_unicode_tables.py > runtime/unicode_tables.h
"""
import html
import html.entities
import sys
import unicodedata

MAX_CP = 0x110000


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def ranges_of(pred):
    """Sorted, merged [lo, hi] ranges of the code points where pred is true."""
    out = []
    for cp in range(MAX_CP):
        if is_surrogate(cp) or not pred(cp):
            continue
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def category(cp):
    return unicodedata.category(chr(cp))


def is_letter(cp):  # regex \p{L}
    return category(cp).startswith("L")


def is_number(cp):  # regex \p{N}
    return category(cp).startswith("N")


# Unicode White_Space (PropList.txt), which is what the `regex` module's \s
# matches. unicodedata does not expose the property; the list has been stable
# since Unicode 6.3 (U+180E left it then).
WHITE_SPACE = ([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
               + list(range(0x2000, 0x200B))
               + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])


def is_white_space(cp):
    return cp in WHITE_SPACE_SET


WHITE_SPACE_SET = set(WHITE_SPACE)


def single(s):
    """The code point of a one-character string, else None."""
    return ord(s) if len(s) == 1 else None


def case_variants(cp):
    """Approximation of the regex module's all_cases(cp): the code point, its
    simple lower/upper/title case and simple case folding, and everything that
    folds to the same code point."""
    c = chr(cp)
    out = {cp}
    for f in (str.lower, str.upper, str.title, str.casefold):
        v = single(f(c))
        if v is not None:
            out.add(v)
    fold = single(c.casefold())
    if fold is not None:
        out |= FOLD_CLASSES.get(fold, set())
    return out


FOLD_CLASSES = {}


def build_fold_classes():
    for cp in range(MAX_CP):
        if is_surrogate(cp):
            continue
        fold = single(chr(cp).casefold())
        if fold is not None and fold != cp:
            FOLD_CLASSES.setdefault(fold, {fold}).add(cp)


def is_dropped(cp):
    """Neither letter, number nor white space, yet the CLIP pattern's negated
    class [^\\s\\p{L}\\p{N}] rejects it under IGNORECASE because one of its
    case variants is a letter or number (e.g. U+0345 COMBINING GREEK
    YPOGEGRAMMENI ~ iota). No alternative matches it, so it separates pieces
    like white space does."""
    if is_letter(cp) or is_number(cp) or is_white_space(cp):
        return False
    return any(is_letter(v) or is_number(v) or is_white_space(v)
               for v in case_variants(cp))


# Final_Sigma context of str.lower(): CPython checks the Cased and
# Case_Ignorable properties, which unicodedata does not expose, so they are
# probed through str.lower() itself (see handle_capital_sigma in CPython):
#   "a" + c + "Σ" ends in final sigma  <=> c is case-ignorable, or cased;
#   "aΣ" + c      has a final sigma     <=> c is case-ignorable, or not cased.
# Both true <=> case-ignorable. For a case-ignorable character the algorithm
# never looks at Cased, so Cased is only needed (and only exact) for the rest:
#   c + "Σ" ends in final sigma         <=> c is cased and not case-ignorable.
FINAL = "\u03c2"


def is_case_ignorable(cp):
    c = chr(cp)
    return (("a" + c + "\u03a3").lower()[-1] == FINAL
            and ("a\u03a3" + c).lower()[1] == FINAL)


def is_cased(cp):
    c = chr(cp)
    return (c + "\u03a3").lower()[-1] == FINAL


def emit_ranges(name, comment, ranges, out):
    out.append("/* %s (%d ranges) */" % (comment, len(ranges)))
    out.append("static const UniRange %s[] = {" % name)
    line = "   "
    for lo, hi in ranges:
        item = " {0x%04X, 0x%04X}," % (lo, hi)
        if len(line) + len(item) > 79:
            out.append(line)
            line = "   "
        line += item
    if line.strip():
        out.append(line)
    out.append("};")
    out.append("")


def c_string(s):
    return '"' + "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\'
                         else "\\x%02x" % ord(ch) for ch in s) + '"'


def main():
    build_fold_classes()
    out = []
    out.append("/*")
    out.append(" * unicode_tables.h - GENERATED by runtime/gen_unicode_tables.py "
               "from Python %d.%d" % sys.version_info[:2])
    out.append(" * (Unicode %s). Do not edit: rerun the generator."
               % unicodedata.unidata_version)
    out.append(" *")
    out.append(" * Data for the CLIP tokenizer (runtime/tokenizer.c): character "
               "classes of")
    out.append(" * the pre-tokenising regex, str.isspace(), str.lower() with "
               "its Final_Sigma")
    out.append(" * context, and html.unescape()'s entity tables. Ranges are "
               "sorted, disjoint")
    out.append(" * and inclusive; lookups binary-search them.")
    out.append(" */")
    out.append("#ifndef LDM_UNICODE_TABLES_H")
    out.append("#define LDM_UNICODE_TABLES_H")
    out.append("")
    out.append("#include <stdint.h>")
    out.append("")
    out.append('#define UNI_TABLES_UNICODE_VERSION "%s"' % unicodedata.unidata_version)
    out.append("")
    out.append("/* An inclusive range of code points. */")
    out.append("typedef struct UniRange {")
    out.append("    uint32_t lo; /* first code point */")
    out.append("    uint32_t hi; /* last code point */")
    out.append("} UniRange;")
    out.append("")
    out.append("/* One str.lower() mapping that differs from the identity. */")
    out.append("typedef struct UniLower {")
    out.append("    uint32_t cp;    /* upper-case code point */")
    out.append("    uint32_t n;     /* number of code points of its lower case (1..3) */")
    out.append("    uint32_t to[3]; /* its lower case */")
    out.append("} UniLower;")
    out.append("")
    out.append("/* One HTML5 named character reference (html.entities.html5). */")
    out.append("typedef struct HtmlEntity {")
    out.append("    const char *name; /* name without '&', with ';' when the "
               "entry has one */")
    out.append("    uint32_t n;       /* number of code points it stands for (1..2) */")
    out.append("    uint32_t cp[2];   /* the code points */")
    out.append("} HtmlEntity;")
    out.append("")
    out.append("/* A numeric reference html.unescape() replaces specially. */")
    out.append("typedef struct HtmlCharref {")
    out.append("    uint32_t num; /* the number after &# */")
    out.append("    uint32_t cp;  /* the code point it becomes */")
    out.append("} HtmlCharref;")
    out.append("")
    out.append("/* A non-ASCII code point whose simple case folding is an ASCII letter. */")
    out.append("typedef struct UniAsciiFold {")
    out.append("    uint32_t cp;    /* the code point (e.g. U+017F LATIN SMALL LETTER LONG S) */")
    out.append("    uint32_t ascii; /* the lower-case ASCII letter it folds to */")
    out.append("} UniAsciiFold;")
    out.append("")

    emit_ranges("uni_letter", "\\p{L}: general category L*", ranges_of(is_letter), out)
    emit_ranges("uni_number", "\\p{N}: general category N*", ranges_of(is_number), out)
    emit_ranges("uni_white_space", "\\s of the regex module: White_Space",
                ranges_of(is_white_space), out)
    emit_ranges("uni_dropped",
                "not L/N/White_Space but rejected by [^\\s\\p{L}\\p{N}] under IGNORECASE",
                ranges_of(is_dropped), out)
    emit_ranges("uni_py_space", "str.isspace(): what str.strip() removes",
                ranges_of(lambda cp: chr(cp).isspace()), out)
    emit_ranges("uni_case_ignorable", "Case_Ignorable (Final_Sigma context of str.lower())",
                ranges_of(is_case_ignorable), out)
    emit_ranges("uni_cased", "Cased, for code points that are not Case_Ignorable",
                ranges_of(lambda cp: not is_case_ignorable(cp) and is_cased(cp)), out)

    lowers = []
    for cp in range(MAX_CP):
        if is_surrogate(cp):
            continue
        low = chr(cp).lower()
        if low != chr(cp):
            assert 1 <= len(low) <= 3
            lowers.append((cp, [ord(c) for c in low]))
    out.append("/* str.lower() per code point, where it is not the identity (%d entries;"
               % len(lowers))
    out.append(" * U+03A3 maps to U+03C3 here, U+03C2 in the Final_Sigma context). */")
    out.append("static const UniLower uni_lower[] = {")
    for cp, low in lowers:
        to = ", ".join("0x%04X" % c for c in low)
        out.append("    {0x%04X, %d, {%s}}," % (cp, len(low), to))
    out.append("};")
    out.append("")

    folds = [(cp, ord(chr(cp).casefold())) for cp in range(0x80, MAX_CP)
             if not is_surrogate(cp) and len(chr(cp).casefold()) == 1
             and ord(chr(cp).casefold()) < 0x80 and chr(cp).casefold().isalpha()]
    out.append("/* Case variants of ASCII letters under the regex module's IGNORECASE. */")
    out.append("static const UniAsciiFold uni_ascii_fold[] = {")
    for cp, a in folds:
        out.append("    {0x%04X, '%s'}," % (cp, chr(a)))
    out.append("};")
    out.append("")

    ents = sorted(html.entities.html5.items(), key=lambda kv: kv[0].encode())
    out.append("/* html.entities.html5, sorted by name (strcmp order), %d entries. */"
               % len(ents))
    out.append("static const HtmlEntity html_entities[] = {")
    for name, val in ents:
        cps = [ord(c) for c in val]
        assert 1 <= len(cps) <= 2 and name.isascii()
        cps += [0] * (2 - len(cps))
        out.append("    {%s, %d, {0x%04X, 0x%04X}}," % (c_string(name), len(val), cps[0], cps[1]))
    out.append("};")
    out.append("")
    out.append("/* Longest entity name, ';' included. */")
    out.append("#define HTML_ENTITY_MAX_NAME %d" % max(len(k) for k in html.entities.html5))
    out.append("")

    refs = sorted(html._invalid_charrefs.items())
    out.append("/* html._invalid_charrefs: numeric references replaced by a fixed code point. */")
    out.append("static const HtmlCharref html_invalid_charrefs[] = {")
    for num, val in refs:
        assert len(val) == 1
        out.append("    {0x%02X, 0x%04X}," % (num, ord(val)))
    out.append("};")
    out.append("")
    inv = set(html._invalid_codepoints)
    emit_ranges("html_invalid_codepoints",
                "html._invalid_codepoints: numeric references that become ''",
                ranges_of(lambda cp: cp in inv), out)

    out.append("#endif")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
