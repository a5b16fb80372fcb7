#!/usr/bin/env bash
# bench.sh - `make bench` (and `make bench-quick`: 256x256 only, without the SD 2.x and SDXL rows).
#
# Makes a random-weight checkpoint of the real SD v1.5 shapes with
# `ldmc randckpt` (no downloads), prints the machine's fingerprint
# (fingerprint.c: FMA peak, stream triad bandwidth, sgemm rate, caches),
# builds the networks for each resolution, and prints per network: median
# time per call, achieved GFLOP/s (the graph's nominal FLOPs / time), the
# ratio to cblas_sgemm on a 2048^3 product measured in this same run (ROUNDS
# rounds, each between two sgemm measurements; the median round is shown),
# the planned arena and peak RSS. The UNet is also built as txt2img builds
# it, for prompts of up to 3 chunks (-D CHUNKS=3), and run at a 1-chunk
# (T=77) and a 3-chunk (T=231) context: what a long prompt costs per step,
# and what the larger build costs a short prompt. Next to the VAE decoder,
# TAESD's decoder (models/taesd, TAESD_DEC: the real shapes, 64 features;
# random weights). Then times a whole 20-step generation with the txt2img
# executable, at the largest resolution a whole 4-step LCM generation at
# cfg 1 with the full VAE and with TAESD (time and peak RSS against the
# 20-step one: the targets of issue 15), and the cost of a LoRA: a random rank-LORA_RANK (default 32) LoRA/LoCon of every
# attention and ResBlock conv weight of the UNet and the text encoder's
# attention and MLP (make_lora.c), its merge alone (the UNet runner's load,
# which binds the weights, with and without it) and the whole generation
# with it (time and peak RSS against the run without). The ControlNet
# row (controlnet_row.sh): a controlled step against a plain one, and a
# whole controlled generation's time and peak RSS, comes last. SD 2.x at
# SD2_RES (default 768) from models/sd2/v2-inference-v.yaml, on a random
# checkpoint of the real SD 2.x 768-v shapes (ldmc randckpt, with the text
# tower's unread tensors): the text encoder and the guided UNet step, the
# same per-step figures as SD v1's rows (ONLY_SD2=1: those rows alone;
# SD2=0: without them).
set -euo pipefail
RESOLUTIONS=${RESOLUTIONS:-"256 512"}
. "$(dirname "$0")/common.sh"
CKPT=$SD15_CKPT
[ -n "${ONLY_SD2:-}${ONLY_SDXL:-}" ] || make_sd15_ckpt
cc -O2 tests/bench/sgemm_rate.c -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o $B/sgemm_rate
sgemm() { $B/sgemm_rate 2048 2 | awk '{print $2}'; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
cc -O2 -march=native -fopenmp tests/bench/fingerprint.c -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o $B/fingerprint
$B/fingerprint
ROUNDS=${ROUNDS:-3}
echo "xsgemm: the network's nominal GFLOP/s over cblas_sgemm's on 2048^3 (2 threads). The machine's speed drifts by"
echo "10-30% within minutes, so each network runs in $ROUNDS rounds, each between two sgemm measurements: a round's"
echo "ratio uses the mean of the two around it, and the table shows the median round (time, rate and ratio) and"
echo "the range of the sgemm rates measured."
printf "%-20s %-9s %5s %9s %9s %8s %15s %9s %19s %8s\n" network res batch "s/call" GFLOP/s xsgemm "sgemm range" "arena MiB" "naive sum of buffers" "RSS MiB"
CFG1=""
CHUNK3="" # the summary lines of the CHUNKS=3 rows
TAESD_LINES="" # TAESD decode / VAE decode, per resolution
# TAESD's decoder: the same shapes for every SD v1 model (64 features); the
# golden set's random-weight file has them, else a random one is made here
TAESD_DEC=${TAESD_DEC:-../shared/goldens/sd1-fast/taesd_decoder.safetensors}
if [ ! -f "$TAESD_DEC" ]; then
    TAESD_DEC=$BUILD/taesd-decoder-random.safetensors
    [ -f "$TAESD_DEC" ] || $LDMC randckpt --config $CONFIG --dtype f32 --seed 1 -o "$TAESD_DEC" models/taesd/taesd_decoder.graph
fi
declare -A NAIVE # "graph-res" -> the naive sum of its buffers, from ldmc --stats
run() { # name graph res batch repeat [runner flags] [ldmc defines] [executable stem, default graph] [weights, default CKPT]
    # (graph: a name in models/sd1, or a path without .graph: models/taesd/taesd_decoder;
    # the config is RUN_CONFIG, default CONFIG)
    local name=$1 graph=$2 res=$3 batch=$4 rep=$5 flags=${6:-} defs=${7:-} stem=${8:-${2##*/}} weights=${9:-$CKPT}
    local config=${RUN_CONFIG:-$CONFIG}
    local exe=$B/$stem-$res gfile=models/sd1/$graph.graph
    case $graph in */*) gfile=$graph.graph ;; esac
    if [ -z "${NAIVE[$stem-$res]:-}" ]; then # compiled once per resolution, whatever the flags
        NAIVE[$stem-$res]=$($LDMC $gfile --config $config -D H=$res -D W=$res -D B=$batch $defs -o $exe \
            --stats 2>&1 | grep -o 'naive [0-9.]* MiB' || echo "naive ? MiB")
    fi
    local stats=${NAIVE[$stem-$res]}
    local s_prev s_next out line rounds="" a p i
    s_prev=$(sgemm)
    local smin=$s_prev smax=$s_prev
    for i in $(seq "$ROUNDS"); do
        out=$($exe --weights "$weights" --random-inputs 1 --repeat $rep $flags 2>&1)
        line=$(echo "$out" | grep 'forward')
        [ -n "${KERNELS_SHOWN:-}" ] || { echo "$out" | grep -o 'kernels .*' | sed 's/^/  /'; KERNELS_SHOWN=1; }
        s_next=$(sgemm)
        smin=$(echo "$smin $s_next" | awk '{print ($2 < $1) ? $2 : $1}')
        smax=$(echo "$smax $s_next" | awk '{print ($2 > $1) ? $2 : $1}')
        # "<g>: load X s, forward T s (median of N), R GFLOP/s, arena A MiB, peak RSS P MiB"
        rounds="$rounds$(echo "$line" | sed -E 's/.*forward ([0-9.]+) s.*, ([0-9.]+) GFLOP\/s.*/\1 \2/') $s_prev $s_next
"
        a=$(echo "$line" | sed -E 's/.*arena ([0-9.]+) MiB.*/\1/')
        p=$(echo "$line" | sed -E 's/.*peak RSS ([0-9.]+) MiB.*/\1/')
        s_prev=$s_next
    done
    # the median round by its ratio (time T, rate R, sgemm before S0 and after S1)
    local med
    med=$(printf "%s" "$rounds" | awk '{print 2*$2/($3+$4), $1, $2}' | sort -n | awk '{r[NR]=$0} END {print r[int((NR+1)/2)]}')
    LAST_T=$(echo "$med" | cut -d' ' -f2)
    printf "%-20s %-9s %5s %9s %9s %8.2f %15s %9s %19s %8s\n" "$name" "${res}x$res" "$batch" "$(echo "$med" | cut -d' ' -f2)" \
        "$(echo "$med" | cut -d' ' -f3)" "$(echo "$med" | cut -d' ' -f1)" "$smin-$smax" "$a" "${stats#naive }" "$p"
}
# SD 2.x (issue 18): the same rows for models/sd2/v2-inference-v.yaml at
# SD2_RES, on random weights of the real 768-v shapes; a guided step is one
# UNet call at batch 2, as for SD v1.
sd2_rows() {
    local res=${SD2_RES:-768} cfg=models/sd2/v2-inference-v.yaml
    local ck=$BUILD/sd2-768v-random-f16.safetensors
    if [ ! -f "$ck" ]; then
        echo "making $ck (RANDOM weights with the real SD 2.x 768-v shapes, fp16)"
        $LDMC randckpt --config $cfg --dtype f16 --seed 1 -o "$ck" models/sd1/clip_text.graph models/sd1/unet.graph \
            models/sd1/vae_encoder.graph models/sd1/vae_decoder.graph
    fi
    $LDMC models/sd1/clip_text.graph --config $cfg --stats -o $B/sd2-clip-stats.c 2>&1 | grep 'reads' | sed 's/^/  /'
    RUN_CONFIG=$cfg run "sd2 clip_text" clip_text "$res" 1 3 "" "" sd2_clip_text "$ck"
    RUN_CONFIG=$cfg run "sd2 unet (768-v)" unet "$res" 2 1 "" "" sd2_unet "$ck"
    echo "${res}x$res SD 2.x: a guided step (UNet at batch 2, $($LDMC models/sd1/unet.graph --config $cfg -D H=$res -D W=$res -D B=2 --stats -o $B/sd2-unet-stats.c 2>&1 | grep -o '[0-9]* GFLOP' | head -1)) takes $LAST_T s"
}
last=${RESOLUTIONS##* }
VOCAB=${VOCAB:-../shared/clip/bpe_simple_vocab_16e6.txt.gz}
T2I=$BUILD/txt2img-${last}x$last
GEN_KEYS="^  |^timing|peak memory|Maximum resident|Elapsed|warning"
generate() { # log [txt2img flags]: a whole generation (20 steps unless the flags say), its output to log
    local log=$1
    shift
    /usr/bin/time -v $T2I --weights "$CKPT" --vocab "$VOCAB" --prompt "a photograph of an astronaut riding a horse" \
        --steps 20 --seed 1 -o "${log%.log}.png" "$@" >"$log" 2>&1 || true
    grep -E "$GEN_KEYS" "$log" || true
}
rss() { grep 'peak memory' "$1" | sed -E 's/.*: ([0-9.]+) MiB.*/\1/'; }
maxrss() { grep 'Maximum resident' "$1" | awk '{printf "%.1f", $NF / 1024}'; } # kB -> MiB
tot() { grep -E '^  total' "$1" | awk '{print $2}'; }
# ---- SDXL base (issue 20): one guided step and one decode at 1024x1024 ------
# Random weights of the real shapes (ldmc randckpt: both text encoders by
# clip_text.graph@EMBEDDER=i), at the F16 file precision; the same columns
# as above (the effective rate: the graph's nominal GFLOP/s, and over
# sgemm's), then the peak RSS of a whole 1-step 1024x1024 generation with
# the txt2img executable (two text encoders, UNet, VAE). XL_RES=N for
# another size; NO_SDXL=1 skips it.
# (ONLY_SDXL=1: the fingerprint and these rows alone.)
sdxl_rows() {
    XL_CONFIG=models/sdxl/sd_xl_base.yaml
    XL_RES=${XL_RES:-1024}
    XL_CKPT=$BUILD/sdxl-random-f16.safetensors
    if [ ! -f "$XL_CKPT" ]; then
        echo "making $XL_CKPT (RANDOM weights with the real SDXL base shapes, fp16)"
        $LDMC randckpt --config $XL_CONFIG --dtype f16 --seed 1 -o "$XL_CKPT" models/sd1/clip_text.graph \
            models/sd1/clip_text.graph@EMBEDDER=1 models/sd1/unet.graph models/sd1/vae_encoder.graph \
            models/sd1/vae_decoder.graph
    fi
    printf "%-20s %-9s %5s %9s %9s %8s %15s %9s %19s %8s\n" network res batch "s/call" GFLOP/s xsgemm "sgemm range" "arena MiB" "naive sum of buffers" "RSS MiB"
    RUN_CONFIG=$XL_CONFIG ROUNDS=1 run "sdxl unet (guided)" unet "$XL_RES" 2 1 "" "" sdxl-unet "$XL_CKPT"
    RUN_CONFIG=$XL_CONFIG ROUNDS=1 run "sdxl vae_decoder" vae_decoder "$XL_RES" 1 1 "" "" sdxl-vae_decoder "$XL_CKPT"
    XL_T2I=$BUILD/txt2img-sdxl-${XL_RES}x$XL_RES
    # built from scratch each time (its generated C removed first): the
    # wall time of the whole build, ldmc and cc for all five networks
    rm -rf "$XL_T2I.d" "$XL_T2I"
    local t0 t1
    t0=$(date +%s.%N)
    if make -s BUILD=$BUILD txt2img CONFIG=$XL_CONFIG H=$XL_RES W=$XL_RES TAESD=0 \
        TXT2IMG_NAME=txt2img-sdxl-${XL_RES}x$XL_RES >/dev/null 2>&1 && [ -x "$XL_T2I" ]; then
        t1=$(date +%s.%N)
        echo "sdxl ${XL_RES}x$XL_RES: make txt2img (ldmc + cc of the two text encoders, UNet, VAE; one job at a time)" \
            "took $(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}') s wall"
        echo "whole 1-step ${XL_RES}x$XL_RES SDXL generation (euler, sgm schedule, guidance, random weights):"
        /usr/bin/time -v "$XL_T2I" --weights "$XL_CKPT" --vocab "$VOCAB" --prompt "a photograph of an astronaut riding a horse" \
            --steps 1 --seed 1 -o $B/gen-sdxl-$XL_RES.png >$B/gen-sdxl-$XL_RES.log 2>&1 || true
        grep -E "$GEN_KEYS" $B/gen-sdxl-$XL_RES.log || true
        echo "sdxl ${XL_RES}x$XL_RES: peak RSS of a whole generation $(rss $B/gen-sdxl-$XL_RES.log) MiB" \
            "(/usr/bin/time: $(maxrss $B/gen-sdxl-$XL_RES.log) MiB)"
    else
        echo "(the SDXL txt2img executable did not build: its generation is skipped)"
    fi
}
if [ -n "${ONLY_SDXL:-}" ]; then
    sdxl_rows
    exit 0
fi
if [ -n "${ONLY_SD2:-}" ]; then
    sd2_rows
    exit 0
fi
# The optional bf16 compute mode (--compute bf16: the GEMM kernel's products
# in bfloat16, float32 sums; Winograd, attention and the rest float32), on
# CPUs with AVX-512 BF16. Its error against the goldens is printed by the
# test suite (golden bf16: ...).
BF16=0
if [ -z "${NO_BF16:-}" ] && grep -qw avx512_bf16 /proc/cpuinfo; then BF16=1; fi
for res in $RESOLUTIONS; do
    run clip_text clip_text "$res" 1 3
    run unet unet "$res" 2 3
    t_guided=$LAST_T
    # --cfg-scale 1: the same executable runs the UNet on the conditional
    # sample only (its batch is a run-time extent, B <= 2)
    run "unet cfg1" unet "$res" 1 3 "--extent B=1"
    CFG1="$CFG1${res}x$res: a step at cfg 1 takes $(echo "$LAST_T $t_guided" | awk '{printf "%.3f s = %.2f", $1, $1/$2}') of a step at cfg 7.5 ($t_guided s; target <= 0.55)
"
    # The UNet as txt2img builds it (-D CHUNKS=3: context T a run-time extent
    # up to 231 tokens, step 77), at a 1-chunk and at a 3-chunk prompt
    run "unet T=77 (CHUNKS=3)" unet "$res" 2 3 "--extent T=77" "-D CHUNKS=3" unet3
    t_c3_77=$LAST_T
    run "unet T=231" unet "$res" 2 3 "--extent T=231" "-D CHUNKS=3" unet3
    CHUNK3="$CHUNK3${res}x$res: a 3-chunk prompt step takes $(echo "$LAST_T $t_c3_77" | awk '{printf "%.3f s = %.2f", $1, $1/$2}') of a 1-chunk step ($t_c3_77 s); the CHUNKS=3 build at 1 chunk takes $(echo "$t_c3_77 $t_guided" | awk '{printf "%.2f", $1/$2}') of the CHUNKS=1 build ($t_guided s)
"
    run vae_decoder vae_decoder "$res" 1 3
    t_vae=$LAST_T
    run taesd_decoder models/taesd/taesd_decoder "$res" 1 5 "" "" "" "$TAESD_DEC"
    tgt="" # issue 15's target is at 512x512
    [ "$res" != 512 ] || tgt="; target <= 0.05"
    TAESD_LINES="$TAESD_LINES${res}x$res: a TAESD decode takes $(echo "$LAST_T $t_vae" | awk '{printf "%s s = %.3f", $1, $1/$2}') of a VAE decode ($t_vae s$tgt)
"
    if [ $BF16 = 1 ]; then
        run "unet bf16" unet "$res" 2 3 "--compute bf16"
        run "vae bf16" vae_decoder "$res" 1 3 "--compute bf16"
    fi
done
[ "${SD2:-1}" = 0 ] || sd2_rows
printf "%s" "$CFG1"
printf "%s" "$CHUNK3"
printf "%s" "$TAESD_LINES"
[ $BF16 = 1 ] || echo "(no AVX-512 BF16 on this CPU, or NO_BF16 set: the bf16 compute rows are skipped)"
if make -s BUILD=$BUILD txt2img CONFIG=$CONFIG H=$last W=$last >/dev/null 2>&1 && [ -x $T2I ]; then
    echo "whole 20-step ${last}x$last generation (ddim, guidance, random weights):"
    generate $B/gen-$last.log
    HAVE_T2I=1
    # LCM, 4 steps at cfg 1 (the UNet at batch 1, no negative prompt): with
    # the full VAE, then with TAESD's decoder (txt2img's TAESD=1 build)
    echo "whole 4-step ${last}x$last LCM generation at cfg 1, full VAE:"
    generate $B/gen-lcm4-$last.log --sampler lcm --steps 4
    echo "whole 4-step ${last}x$last LCM generation at cfg 1, --taesd $(basename "$TAESD_DEC"):"
    generate $B/gen-lcm4-taesd-$last.log --sampler lcm --steps 4 --taesd "$TAESD_DEC"
    t20=$(tot $B/gen-$last.log) tv=$(tot $B/gen-lcm4-$last.log) tt=$(tot $B/gen-lcm4-taesd-$last.log)
    r20=$(rss $B/gen-$last.log) rt=$(rss $B/gen-lcm4-taesd-$last.log)
    if [ -n "$t20" ] && [ -n "$tv" ] && [ -n "$tt" ] && [ -n "$r20" ] && [ -n "$rt" ]; then
        echo "${last}x$last: a 4-step cfg-1 LCM image with the full VAE takes $(echo "$tv $t20" | awk '{printf "%s s = %.3f", $1, $1/$2}') of the 20-step cfg-7.5 image ($t20 s; target <= 0.15)"
        echo "${last}x$last: a 4-step cfg-1 LCM image with TAESD takes $(echo "$tt $t20" | awk '{printf "%s s = %.3f", $1, $1/$2}') of the 20-step cfg-7.5 image ($t20 s; target <= 0.11)"
        echo "${last}x$last: peak RSS of the 4-step TAESD generation $(echo "$rt $r20" | awk '{printf "%s MiB = %.3f", $1, $1/$2}') of the 20-step one ($r20 MiB; target <= 1)"
    else
        echo "(a generation failed: see $B/gen-$last.log, $B/gen-lcm4-$last.log and $B/gen-lcm4-taesd-$last.log)"
    fi
else
    echo "(txt2img executable not available: whole-generation timing skipped)"
    HAVE_T2I=0
fi
# ---- LoRA: the merge at bind time, alone and in a whole generation --------
LORA_RANK=${LORA_RANK:-32}
LORA=$B/lora-r$LORA_RANK.safetensors
cc -O2 -march=native -Iruntime tests/bench/make_lora.c $BUILD/libldmcore.a -ljansson -lm -o $B/make_lora
mk=$($B/make_lora --rank "$LORA_RANK" --alpha 16 --seed 1 -o "$LORA" "$CKPT")
echo "$mk"
n_mod=$(echo "$mk" | sed -E 's/.*: ([0-9]+) modules.*/\1/')
# The runner binds (and so merges) every weight at load, before its first
# forward (ldm_runner_main): the difference of the two loads is the merge.
u=$B/unet-$last
[ -x "$u" ] || $LDMC models/sd1/unet.graph --config $CONFIG -D H=$last -D W=$last -D B=2 -o "$u"
# LORA_ROUNDS pairs (without, then with), the smallest load of each: the
# first load may read the checkpoint from disk rather than the page cache.
load0="" load1="" out1=""
for i in $(seq "${LORA_ROUNDS:-2}"); do
    out0=$($u --weights "$CKPT" --random-inputs 1 --repeat 1 2>&1)
    out1=$($u --weights "$CKPT" --random-inputs 1 --repeat 1 --lora "$LORA:0.8" 2>&1)
    l0=$(echo "$out0" | grep 'forward' | sed -E 's/.*: load ([0-9.]+) s.*/\1/')
    l1=$(echo "$out1" | grep 'forward' | sed -E 's/.*: load ([0-9.]+) s.*/\1/')
    load0=$(echo "$load0 $l0" | awk '{print ($1 == "" || $NF < $1) ? $NF : $1}')
    load1=$(echo "$load1 $l1" | awk '{print ($1 == "" || $NF < $1) ? $NF : $1}')
done
echo "LoRA merge alone (unet ${last}x$last runner, --repeat 1, the smaller load of ${LORA_ROUNDS:-2} each; the UNet's modules merge, the text encoder's match nothing here):"
echo "$out1" | grep '^lora ' | sed -E 's/ \(first:.*//; s/^/  /'  || true
echo "  load without LoRA $load0 s, with --lora $(basename "$LORA"):0.8 $load1 s: the merge $(echo "$load1 $load0" | awk '{printf "%.3f", $1 - $2}') s"
if [ "$HAVE_T2I" = 1 ]; then
    echo "whole 20-step ${last}x$last generation with --lora $(basename "$LORA"):0.8:"
    generate $B/gen-lora-$last.log --lora "$LORA:0.8"
    r0=$(rss $B/gen-$last.log) r1=$(rss $B/gen-lora-$last.log)
    if [ -n "$r0" ] && [ -n "$r1" ]; then
        echo "LoRA (rank $LORA_RANK, $n_mod modules): merge adds $(echo "$load1 $load0" | awk '{printf "%.3f", $1 - $2}') s to the load; peak RSS $r1 MiB with vs $r0 MiB without (ratio $(echo "$r1 $r0" | awk '{printf "%.3f", $1 / $2}'); target <= 1.05)"
        echo "  /usr/bin/time maximum resident set: $(maxrss $B/gen-lora-$last.log) MiB with vs $(maxrss $B/gen-$last.log) MiB without;" \
            "total $(tot $B/gen-lora-$last.log) s with vs $(tot $B/gen-$last.log) s without (txt2img binds each network when it" \
            "first runs, so there the merge falls in text encode and the first sampling step)"
    else
        echo "(a generation failed: see $B/gen-$last.log and $B/gen-lora-$last.log)"
    fi
fi
# ---- ControlNet: a controlled step against a plain one (tests/bench/controlnet_row.sh) ----
echo "ControlNet (random weights of the SD v1.5 ControlNet 1.1 shapes, F16):"
BUILD=$BUILD RES=$last CKPT=$CKPT ROUNDS=$ROUNDS GEN=$HAVE_T2I tests/bench/controlnet_row.sh || echo "(the ControlNet row failed)"
[ -n "${NO_SDXL:-}" ] || sdxl_rows
