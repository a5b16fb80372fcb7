# common.sh - sourced by the bench scripts (bench.sh, controlnet_row.sh,
# taesd_ratio.sh): where things are, the random-weight SD v1.5 checkpoint
# they share, and how a graph runner's time is read.
BUILD=${BUILD:-build}
CONFIG=models/sd1/v1-inference.yaml
B=$BUILD/bench
mkdir -p "$B"
LDMC=$BUILD/ldmc
# The SD v1.5 checkpoint: RANDOM weights with the real shapes, F16 (made
# once by ldmc randckpt: nothing is downloaded).
SD15_CKPT=$BUILD/sd15-random-f16.safetensors
make_sd15_ckpt() {
    if [ ! -f "$SD15_CKPT" ]; then
        echo "making $SD15_CKPT (RANDOM weights with the real SD v1.5 shapes, fp16)"
        $LDMC randckpt --config $CONFIG --dtype f16 --seed 1 -o "$SD15_CKPT" models/sd1/clip_text.graph \
            models/sd1/unet.graph models/sd1/vae_encoder.graph models/sd1/vae_decoder.graph
    fi
}
# runner_time EXE ARGS...: the median forward time (s) a graph runner
# prints for --random-inputs 1 and ARGS (e.g. --weights W --repeat 3).
runner_time() { "$@" --random-inputs 1 2>&1 | grep forward | sed -E 's/.*forward ([0-9.]+) s.*/\1/'; }
