#!/usr/bin/env bash
# taesd_ratio.sh - issue 15's TAESD row of `make bench` alone: a TAESD
# decode against a full VAE decode at RES (default 512), ROUNDS (default 3)
# rounds, each timing the VAE decoder (median of 3 calls) and then TAESD's
# decoder (median of 5) back to back, so that each round's ratio is taken
# within the same minute on a shared, drifting machine. Prints every round
# and the median ratio. The same executables and weights as bench.sh's
# vae_decoder and taesd_decoder rows (random fp16 VAE weights of the real
# SD v1.5 shapes; the golden set's random-weight TAESD decoder).
set -euo pipefail
RES=${RES:-512}
ROUNDS=${ROUNDS:-3}
. "$(dirname "$0")/common.sh"
CKPT=${CKPT:-$SD15_CKPT}
if [ ! -f "$CKPT" ]; then
    CKPT=$BUILD/vae-decoder-random-f16.safetensors
    [ -f "$CKPT" ] || $LDMC randckpt --config $CONFIG --dtype f16 --seed 1 -o "$CKPT" models/sd1/vae_decoder.graph
fi
TAESD_DEC=${TAESD_DEC:-../shared/goldens/sd1-fast/taesd_decoder.safetensors}
$LDMC models/sd1/vae_decoder.graph --config $CONFIG -D H=$RES -D W=$RES -D B=1 -o $B/vae_decoder-$RES
$LDMC models/taesd/taesd_decoder.graph --config $CONFIG -D H=$RES -D W=$RES -D B=1 -o $B/taesd_decoder-$RES
t() { runner_time "$@"; }
ratios=""
for i in $(seq "$ROUNDS"); do
    tv=$(t $B/vae_decoder-$RES --weights "$CKPT" --repeat 3)
    tt=$(t $B/taesd_decoder-$RES --weights "$TAESD_DEC" --repeat 5)
    r=$(echo "$tt $tv" | awk '{printf "%.4f", $1 / $2}')
    echo "round $i: vae_decoder ${RES}x$RES $tv s, taesd_decoder $tt s, ratio $r"
    ratios="$ratios$r $tv $tt
"
done
printf "%s" "$ratios" | sort -n | awk '{r[NR]=$0} END {split(r[int((NR+1)/2)], m, " "); printf "median round: ratio %s (vae %s s, taesd %s s)\n", m[1], m[2], m[3]}'
