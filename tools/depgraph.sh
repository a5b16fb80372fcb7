#!/usr/bin/env bash
# depgraph.sh - the dependency graphs of the project's source directories,
# and a check that they have no cycle.
#
#   tools/depgraph.sh [-b BUILD] [-g include|link|all] [-v] [DIR...]
#
# For each DIR (default: compiler runtime), run from the repository root:
#   (a) the include graph: `a.c -> b.h` for every `#include "b.h"` line of
#       the directory's .c, .h, .l and .y files (subdirectories too) whose
#       header is a project file: found next to the includer, in DIR, or in
#       one of the directories the Makefile passes with -I (runtime,
#       compiler; those outside DIR are named with their directory, e.g.
#       compiler's `config.c -> runtime/util.h`). System and generated
#       headers are left out.
#   (b) the link graph: `a.c -> b.c` when the object of a.c
#       (BUILD/obj/DIR/a.o) leaves a symbol undefined (nm -u) that the
#       object of b.c defines. Objects of the other -I directories count
#       too (named with their directory); flex/bison sources X.l, X.y stand
#       for BUILD/obj/gen/X.o. Sources without an object (not built) are
#       left out, with a note on stderr. -v adds the symbols to each edge.
# Each graph is followed by its cycles, if any (`cycle: a.c -> b.c -> a.c`).
#
# Exit status: 0 no cycle, 1 a cycle in some graph, 2 a usage error or no
# objects to read (build first: make). `make depgraph` runs it on both.
set -u

build=${BUILD:-build}
graphs=all
verbose=0
incdirs="runtime compiler"

usage() {
    sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

while getopts b:g:vh opt; do
    case $opt in
    b) build=$OPTARG ;;
    g) graphs=$OPTARG ;;
    v) verbose=1 ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
case $graphs in include | link | all) ;; *) usage ;; esac
[ $# -gt 0 ] || set -- compiler runtime

# Print the cycles of the graph on stdin (`a -> b` lines); exit 1 if any.
find_cycles() {
    awk '
    function dfs(u,    i, v, k, cyc) {
        color[u] = 1
        stack[++sp] = u
        for (i = 1; i <= nadj[u]; i++) {
            v = adj[u, i]
            if (color[v] == 1) {
                cyc = ""
                for (k = 1; k <= sp && stack[k] != v; k++) ;
                for (; k <= sp; k++) cyc = cyc stack[k] " -> "
                print "cycle: " cyc v
                found++
            } else if (color[v] != 2) dfs(v)
        }
        sp--
        color[u] = 2
    }
    $2 == "->" {
        if (!($1 in seen)) { seen[$1] = 1; nodes[++n] = $1 }
        if (!($3 in seen)) { seen[$3] = 1; nodes[++n] = $3 }
        if ($1 != $3) adj[$1, ++nadj[$1]] = $3
    }
    END {
        for (i = 1; i <= n; i++) if (color[nodes[i]] != 2) dfs(nodes[i])
        exit found ? 1 : 0
    }'
}

# The include graph of directory $1.
include_edges() {
    local dir=$1 f rel h cand p found label
    find "$dir" -type f \( -name '*.c' -o -name '*.h' -o -name '*.l' -o -name '*.y' \) | LC_ALL=C sort |
    while read -r f; do
        rel=${f#"$dir"/}
        sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" |
        while read -r h; do
            found=
            for cand in "$(dirname "$f")" "$dir" $incdirs; do
                p=$cand/$h
                if [ -f "$p" ]; then found=$p; break; fi
            done
            [ -n "$found" ] || continue
            found=$(realpath --relative-to=. "$found")
            case $found in
            "$dir"/*) label=${found#"$dir"/} ;;
            *) label=$found ;;
            esac
            echo "$rel -> $label"
        done
    done | LC_ALL=C sort -u
}

# "object<TAB>label<TAB>own" for the built objects of the sources of
# directory $1 (own 1 when $1 is $2, the directory graphed; the labels of
# other directories carry their directory). Sources of $2 without an
# object are listed as "missing<TAB>label<TAB>1".
objects_of() {
    local dir=$1 self=$2 f rel base o label own=0
    [ "$dir" = "$self" ] && own=1
    find "$dir" -type f \( -name '*.c' -o -name '*.l' -o -name '*.y' \) | LC_ALL=C sort |
    while read -r f; do
        rel=${f#"$dir"/}
        case $rel in
        *.c) o=$build/obj/$dir/${rel%.c}.o ;;
        *) base=${rel##*/}; o=$build/obj/gen/${base%.*}.o ;;
        esac
        if [ $own = 1 ]; then label=$rel; else label=$dir/$rel; fi
        if [ -f "$o" ]; then printf '%s\t%s\t%s\n' "$o" "$label" $own
        elif [ $own = 1 ]; then printf 'missing\t%s\t1\n' "$label"; fi
    done
}

# The link graph of directory $1.
link_edges() {
    local dir=$1 d list missing o label own
    list=$(for d in "$dir" $incdirs; do [ -d "$d" ] && objects_of "$d" "$dir"; done | awk -F'\t' '!seen[$2]++')
    missing=$(printf '%s\n' "$list" | awk -F'\t' '$1 == "missing" { printf " %s", $2 }')
    [ -z "$missing" ] || echo "depgraph: $dir: no object for$missing (not built: left out of the link graph)" >&2
    if ! printf '%s\n' "$list" | awk -F'\t' '$1 != "missing" && $3 == 1' | grep -q .; then
        echo "depgraph: $dir: no objects in $build/obj/$dir (build first: make)" >&2
        return 2
    fi
    printf '%s\n' "$list" | awk -F'\t' '$1 != "missing"' |
    while IFS=$'\t' read -r o label own; do
        # the defined globals, then the undefined symbols, of each object
        nm -g --defined-only "$o" | awk -v l="$label" -v own="$own" 'NF >= 3 { print "D", l, $3, own }'
        nm -u "$o" | awk -v l="$label" -v own="$own" '{ print "U", l, $NF, own }'
    done |
    awk -v verbose="$verbose" '
    $1 == "D" { if ($3 in def) def[$3] = def[$3] SUBSEP $2; else def[$3] = $2; next }
    $1 == "U" && $4 == 1 { und[++n] = $2; usym[n] = $3 }
    END {
        for (i = 1; i <= n; i++) {
            if (!(usym[i] in def)) continue
            k = split(def[usym[i]], bs, SUBSEP)
            for (j = 1; j <= k; j++) {
                if (bs[j] == und[i]) continue
                e = und[i] " -> " bs[j]
                if (!(e in syms)) { syms[e] = usym[i]; edges[++m] = e }
                else syms[e] = syms[e] " " usym[i]
            }
        }
        for (i = 1; i <= m; i++) print edges[i] (verbose ? "    # " syms[edges[i]] : "")
    }' | LC_ALL=C sort
}

status=0
for dir in "$@"; do
    dir=${dir%/}
    if [ ! -d "$dir" ]; then
        echo "depgraph: no directory $dir (run from the repository root)" >&2
        exit 2
    fi
    for g in include link; do
        [ "$graphs" = all ] || [ "$graphs" = "$g" ] || continue
        if [ $g = include ]; then
            echo "== $dir/: include graph (#include \"...\")"
            edges=$(include_edges "$dir")
        else
            echo "== $dir/: link graph (objects in $build/obj/$dir)"
            edges=$(link_edges "$dir") || exit 2
        fi
        [ -z "$edges" ] || printf '%s\n' "$edges"
        if cycles=$(printf '%s\n' "$edges" | sed 's/    # .*//' | find_cycles); then
            echo "-- $dir/ $g graph: no cycle"
        else
            printf '%s\n' "$cycles"
            echo "-- $dir/ $g graph: CYCLE"
            status=1
        fi
    done
done
exit $status
