#!/usr/bin/env bash
# controlnet_row.sh - issue 19's ControlNet row of `make bench` (also run
# alone): the cost of a ControlNet-controlled UNet step against a plain one
# at RES (default 512), measured in the same run. Random weights of the real
# shapes: the SD v1.5 checkpoint of bench.sh (CKPT) and a ControlNet 1.1 of
# SD v1.5's shapes made by `ldmc randckpt` from models/sd1/controlnet.graph
# (361 M parameters, F16 as the released files). Graph runners at batch 2
# (the guided [uncond, cond] batch): ROUNDS (default 3) rounds, each timing
# the plain UNet, the ControlNet and the controlled UNet (unet.graph -D
# CONTROL=1) back to back (median of 3 calls each); a controlled step is the
# ControlNet plus the controlled UNet. Prints every round and the median
# ratio. With GEN=1 (default) also a whole controlled generation with the
# CONTROLNET=1 executable (GEN_STEPS steps, default 20) under /usr/bin/time
# -v: its time per step and peak RSS against the same run without
# --control-net.
set -euo pipefail
RES=${RES:-512}
ROUNDS=${ROUNDS:-3}
GEN=${GEN:-1}
GEN_STEPS=${GEN_STEPS:-20}
. "$(dirname "$0")/common.sh"
if [ -z "${CKPT:-}" ]; then
    make_sd15_ckpt
    CKPT=$SD15_CKPT
fi
CN=${CN:-$BUILD/controlnet-sd15-random-f16.safetensors}
if [ ! -f "$CN" ]; then
    echo "making $CN (RANDOM weights with the shapes of an SD v1.5 ControlNet 1.1, fp16)"
    $LDMC randckpt --config $CONFIG --dtype f16 --seed 2 -o "$CN" models/sd1/controlnet.graph
fi
$LDMC models/sd1/unet.graph --config $CONFIG -D H=$RES -D W=$RES -D B=2 -o $B/unet-$RES
$LDMC models/sd1/unet.graph --config $CONFIG -D H=$RES -D W=$RES -D B=2 -D CONTROL=1 -o $B/unet_control-$RES
$LDMC models/sd1/controlnet.graph --config $CONFIG -D H=$RES -D W=$RES -D B=2 -o $B/controlnet-$RES
t() { runner_time "$@" --repeat 3; }
ratios=""
for i in $(seq "$ROUNDS"); do
    tp=$(t $B/unet-$RES --weights "$CKPT")
    tn=$(t $B/controlnet-$RES --weights "$CN")
    tc=$(t $B/unet_control-$RES --weights "$CKPT")
    r=$(echo "$tp $tn $tc" | awk '{printf "%.3f", ($2 + $3) / $1}')
    echo "round $i: ${RES}x$RES batch 2: plain unet $tp s; controlnet $tn s + controlled unet $tc s; ratio $r"
    ratios="$ratios$r $tp $tn $tc
"
done
printf "%s" "$ratios" | sort -n | awk '{r[NR]=$0} END {split(r[int((NR+1)/2)], m, " "); printf "controlnet %sx%s: a controlled step (ControlNet + controlled UNet, batch 2) takes %s of a plain step (plain %s s, controlnet %s s, controlled unet %s s; median round)\n", "'$RES'", "'$RES'", m[1], m[2], m[3], m[4]}'
[ "$GEN" = 1 ] || exit 0
# a whole generation: the CONTROLNET=1 executable, with and without the ControlNet
make -s BUILD=$BUILD txt2img CONFIG=$CONFIG H=$RES W=$RES CONTROLNET=1 TXT2IMG_NAME=txt2img-cn-${RES}x$RES >/dev/null
EXE=$BUILD/txt2img-cn-${RES}x$RES
HINT=$B/hint-$RES.png
# an edge-map-like hint: white diagonal lines on black (a PNG written with zlib alone)
python3 - "$HINT" "$RES" <<'EOF'
import struct, sys, zlib
path, n = sys.argv[1], int(sys.argv[2])
rows = b"".join(b"\0" + bytes(255 if (x + y) % 64 < 2 or (x - y) % 96 < 2 else 0 for x in range(n) for _ in range(3)) for y in range(n))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
EOF
gen() { # log [flags]
    local log=$1
    shift
    /usr/bin/time -v $EXE --weights "$CKPT" --prompt "a photograph of an astronaut riding a horse" --steps "$GEN_STEPS" \
        --seed 1 -o "${log%.log}.png" "$@" >"$log" 2>&1 || { echo "(generation failed: $log)"; tail -3 "$log"; }
}
gen $B/gen-cn-plain-$RES.log
gen $B/gen-cn-$RES.log --control-net "$CN" --control-image "$HINT"
for f in plain cn; do
    log=$B/gen-cn-$RES.log
    [ $f = plain ] && log=$B/gen-cn-plain-$RES.log
    echo "whole $GEN_STEPS-step ${RES}x$RES generation, $([ $f = plain ] && echo "no --control-net" || echo "--control-net (random ControlNet 1.1 shapes, F16)"):" \
        "$(grep -E '^  sampling' "$log" | awk '{print $2}') s sampling, total $(grep -E '^  total' "$log" | awk '{print $2}') s," \
        "peak RSS $(grep 'peak memory' "$log" | sed -E 's/.*: ([0-9.]+) MiB.*/\1/') MiB" \
        "(/usr/bin/time: $(grep 'Maximum resident' "$log" | awk '{printf "%.1f", $NF / 1024}') MiB)"
done
