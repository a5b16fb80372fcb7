# ldmc - ahead-of-time compiler for Latent Diffusion Models.
#
#   make            build/ldmc, the runtime libraries and the runtime tools
#   make test       build everything and run the Check suite
#   make check      `make test`, then the suite again under ASan + UBSan, then `make fuzz FUZZ_S=20`
#   make fuzz       the input readers under libFuzzer, FUZZ_S seconds each (tests/fuzz/README.md)
#   make depgraph   the include and link graphs of compiler/ and runtime/; fails on a cycle
#   make clean
#
# SAN=1 builds everything (and everything ldmc compiles) with
# AddressSanitizer and UndefinedBehaviorSanitizer into build-san/.
# WIDE=1 builds into build-wide/ with the AVX-512 micro-kernels (4x48,
# 4x32) even where the CPU has no AVX-512: their vectors are then pairs of
# AVX2 vectors. `make check` runs the GEMM and Winograd tests that way, so
# the code an AVX-512 machine runs is tested on any machine.

CC      ?= cc
SAN     ?= 0
WIDE    ?= 0
ifeq ($(WIDE),1)
BUILD   ?= build-wide
WIDEFLAGS = -DLDM_WIDE_KERNELS
endif
ifeq ($(FUZZ),1)
# FUZZ=1 (make fuzz): clang, the code instrumented for libFuzzer, ASan + UBSan
CC      := clang
BUILD   ?= build-fuzz
SANFLAGS = -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      = -O1 -g
# libFuzzer's convention: image.c then lets libpng ignore chunk CRCs
FUZZDEFS = -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
# clang, unlike gcc, warns of a static inline function no code of this CPU uses
# and of `#pragma GCC optimize` (sampler.c), which it ignores
FUZZWARN = -Wno-unused-function -Wno-unknown-pragmas
else ifeq ($(SAN),1)
BUILD   ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      = -O1 -g
else
BUILD   ?= build
SANFLAGS =
OPT      = -O2 -g
endif

# ARCH: the CPUs the executables (make txt2img, make sample) run on.
# native (default) is the build machine's; x86-64-v3 (AVX2, FMA, F16C,
# BMI2) and x86-64-v4 (+ AVX-512 F/BW/CD/DQ/VL) run on any CPU of that level.
# The runtime's objects for another ARCH than native are compiled into
# $(BUILD)/arch-ARCH/ (the native ones stay in $(BUILD)/obj/), the
# networks' objects into <name>.d/arch-ARCH/ next to the generated C they
# share with the native build, and the executable is named <name>-ARCH.
# The executables check the CPU before main (runtime/cpu_check.c).
ARCH    ?= native
ARCHES   = native x86-64-v3 x86-64-v4
ifeq ($(filter $(ARCHES),$(ARCH)),)
$(error ARCH=$(ARCH): expected one of $(ARCHES) (native: this machine's CPU))
endif
ifneq ($(words $(ARCH)),1)
$(error ARCH=$(ARCH): expected one of $(ARCHES) (native: this machine's CPU))
endif
ARCH_SUFFIX = $(if $(filter native,$(ARCH)),,-$(ARCH))

WARN     = -Wall -Wextra -Werror $(FUZZWARN)
BASEFLAGS = -std=gnu11 $(OPT) $(SANFLAGS) $(WIDEFLAGS) -fopenmp -march=$(ARCH)
CFLAGS   += $(BASEFLAGS) $(WARN)
CPPFLAGS += -Iruntime -Icompiler -I$(BUILD)/gen -I/usr/include/x86_64-linux-gnu/openblas-pthread $(FUZZDEFS)
LDLIBS   = -lopenblas -ljansson -lyaml -lpng -lnettle -lz -lm
LDFLAGS += $(SANFLAGS) -fopenmp

ROOT    := $(abspath .)

# The runtime is two libraries. libldmcore.a is its plain part (errors,
# allocation, files, safetensors, LoRA merging): no OpenMP, no BLAS, no
# kernels, all that ldmc itself links. libldmrt.a is the rest (kernels, models, tokenizer,
# samplers, PNG, ...), which needs libldmcore.a after it. RT_LIB is the
# whole runtime in link order: what generated programs and the tests link.
RT_SRC   := $(wildcard runtime/*.c)
RT_OBJ   := $(RT_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/runtime/vocab.o
CORE_SRC := runtime/util.c runtime/safetensors.c runtime/ckpt.c runtime/lora.c runtime/args.c
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
CORE_LIB := $(BUILD)/libldmcore.a
RT_LIB   := $(BUILD)/libldmrt.a $(CORE_LIB)

CLI_SRC := $(wildcard runtime/cli/*.c)
CLI_BIN := $(patsubst runtime/cli/%.c,$(BUILD)/%,$(subst _,-,$(CLI_SRC)))

COMP_SRC := $(filter-out compiler/main.c,$(wildcard compiler/*.c))
COMP_OBJ := $(COMP_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/parser.o $(BUILD)/obj/gen/lexer.o
COMP_LIB := $(BUILD)/libldmc.a

TEST_SRC ?= $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
# The fuzz harnesses (tests/fuzz/fuzz_SURFACE.c): built plain into the test
# runner, where tests/test_fuzz_regress.c replays their regress corpus.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
FUZZ_HARNESS_OBJ := $(if $(filter tests/test_fuzz_regress.c,$(TEST_SRC)),$(FUZZ_SRC:%.c=$(BUILD)/obj/%.o))

# Debian packages needed to build and test (and, statically, to deploy).
DEB_PACKAGES = build-essential pkg-config flex bison libopenblas-dev check libyaml-dev \
               zlib1g-dev libpng-dev libjansson-dev nettle-dev clang libclang-rt-dev libomp-dev \
               libmicrohttpd-dev chromium chromium-driver python3-selenium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all test check clean deps bench bench-quick fingerprint demo depgraph fuzz fuzz-build FORCE
.SECONDARY:

all: $(BUILD)/ldmc $(RT_LIB) $(CLI_BIN)

# ---- runtime --------------------------------------------------------------
$(BUILD)/libldmrt.a: $(filter-out $(CORE_OBJ),$(RT_OBJ))
	@rm -f $@
	ar rcs $@ $^

$(CORE_LIB): $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# the CLIP vocabulary as data (.incbin, paths from the top directory)
$(BUILD)/obj/runtime/vocab.o: runtime/vocab.S runtime/vocab/bpe_simple_vocab_16e6.txt.gz
	@mkdir -p $(dir $@)
	$(CC) -c $< -o $@

# The CPU check runs before main on any x86-64 CPU: compiled for the
# baseline whatever ARCH is; cpu_features.c records what ARCH assumed.
$(BUILD)/obj/runtime/cpu_check.o: CFLAGS += -march=x86-64 -mtune=generic
$(BUILD)/obj/runtime/cpu_features.o: CPPFLAGS += -DLDM_ARCH='"$(ARCH)"'

# The runtime of the executables: $(BUILD)'s for ARCH=native, else the same
# sources compiled for ARCH into $(BUILD)/arch-ARCH/ (EXE_OBJ: their objects).
ifeq ($(ARCH),native)
EXE_OBJ    := $(BUILD)/obj
EXE_RT_LIB := $(RT_LIB)
else
ARCH_DIR   := $(BUILD)/arch-$(ARCH)
EXE_OBJ    := $(ARCH_DIR)/obj
EXE_RT_LIB := $(ARCH_DIR)/libldmrt.a $(ARCH_DIR)/libldmcore.a
ARCH_RT_OBJ   := $(RT_SRC:%.c=$(EXE_OBJ)/%.o) $(EXE_OBJ)/runtime/vocab.o
ARCH_CORE_OBJ := $(CORE_SRC:%.c=$(EXE_OBJ)/%.o)

$(ARCH_DIR)/libldmrt.a: $(filter-out $(ARCH_CORE_OBJ),$(ARCH_RT_OBJ))
	@rm -f $@
	ar rcs $@ $^

$(ARCH_DIR)/libldmcore.a: $(ARCH_CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(EXE_OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(EXE_OBJ)/runtime/vocab.o: runtime/vocab.S runtime/vocab/bpe_simple_vocab_16e6.txt.gz
	@mkdir -p $(dir $@)
	$(CC) -c $< -o $@

$(EXE_OBJ)/runtime/cpu_check.o: CFLAGS += -march=x86-64 -mtune=generic
$(EXE_OBJ)/runtime/cpu_features.o: CPPFLAGS += -DLDM_ARCH='"$(ARCH)"'
endif
# The build's version (--version of every program): `git describe` of the
# checkout, "unknown" outside one; LDM_GIT_VERSION=... overrides it. The
# header is rewritten only when it changes (only args.o depends on it).
LDM_GIT_VERSION ?= $(or $(shell git -C $(ROOT) describe --always --dirty 2>/dev/null),unknown)
$(BUILD)/gen/version.h: FORCE
	@mkdir -p $(dir $@)
	@echo '#define LDM_GIT_VERSION "$(LDM_GIT_VERSION)"' > $@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@

$(BUILD)/obj/runtime/args.o: $(BUILD)/gen/version.h

# The HTTP server of the txt2img executables (runtime/apps/server.c, its
# page embedded by server_page.S), also linked into the test runner and the
# fuzz harnesses (tests/test_server.c, tests/fuzz/fuzz_http.c).
SERVER_OBJ  := $(BUILD)/obj/runtime/apps/server.o $(BUILD)/obj/runtime/apps/server_page.o
SERVER_LIBS  = -lmicrohttpd

$(BUILD)/obj/runtime/apps/server_page.o: runtime/apps/server_page.S runtime/apps/server_page.html
	@mkdir -p $(dir $@)
	$(CC) -c $< -o $@

# runtime/cli/foo_bar.c -> $(BUILD)/foo-bar
define cli_rule
$(BUILD)/$(subst _,-,$(1)): $(BUILD)/obj/runtime/cli/$(1).o $(RT_LIB)
	$$(CC) $$(LDFLAGS) $$^ $$(LDLIBS) -o $$@
endef
$(foreach c,$(patsubst runtime/cli/%.c,%,$(CLI_SRC)),$(eval $(call cli_rule,$(c))))

# ---- compiler -------------------------------------------------------------
$(BUILD)/gen/parser.c $(BUILD)/gen/parser.h: compiler/parser.y
	@mkdir -p $(BUILD)/gen
	bison -Wall -Werror --defines=$(BUILD)/gen/parser.h -o $(BUILD)/gen/parser.c $<

$(BUILD)/gen/lexer.c $(BUILD)/gen/lexer.h: compiler/lexer.l
	@mkdir -p $(BUILD)/gen
	flex --header-file=$(BUILD)/gen/lexer.h -o $(BUILD)/gen/lexer.c $<

# flex/bison output is not ours to keep warning-free for every warning.
$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(BUILD)/gen/parser.h $(BUILD)/gen/lexer.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(BASEFLAGS) -Wall -Wno-unused-function -Wno-unused-but-set-variable -c $< -o $@

$(COMP_OBJ): $(BUILD)/gen/parser.h $(BUILD)/gen/lexer.h

# What ldmc needs to compile the C it writes into a runnable program.
$(BUILD)/obj/compiler/driver.o: CPPFLAGS += \
	-DLDMC_CC='"$(CC)"' \
	-DLDMC_CFLAGS='"$(BASEFLAGS) $(WARN) -I$(ROOT)/runtime -I/usr/include/x86_64-linux-gnu/openblas-pthread"' \
	-DLDMC_LIBS='"$(addprefix $(ROOT)/,$(RT_LIB)) $(LDLIBS)"'

$(COMP_LIB): $(COMP_OBJ)
	@rm -f $@
	ar rcs $@ $^

# ldmc is a compiler: only the runtime's core, no OpenMP, no BLAS, no kernels
# (runtime/kernel_sizes.h gives it the kernels' scratch sizes inline).
LDMC_LDFLAGS = $(filter-out -fopenmp,$(LDFLAGS))
LDMC_LDLIBS  = -ljansson -lyaml -lz -lm
$(BUILD)/ldmc: $(BUILD)/obj/compiler/main.o $(COMP_LIB) $(CORE_LIB)
	$(CC) $(LDMC_LDFLAGS) $^ $(LDMC_LDLIBS) -o $@

# ---- tests ----------------------------------------------------------------
# Every tests/*.c defines one or more `Suite *suite_NAME(void)`; the runner
# collects them all, so adding a test file needs no other edit.
# (rewritten only when the list changes, e.g. with another TEST_SRC)
$(BUILD)/gen/suites.inc: $(TEST_SRC) FORCE
	@mkdir -p $(dir $@)
	@grep -ho '^Suite \*suite_[a-z0-9_]*(void)' $(TEST_SRC) | \
	  sed 's/^Suite \*\(suite_[a-z0-9_]*\)(void)/SUITE(\1)/' | sort > $@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@

FORCE:

$(BUILD)/obj/tests/main.o: $(BUILD)/gen/suites.inc

$(FUZZ_HARNESS_OBJ): CPPFLAGS += -DLDM_FUZZ_ROOT='"$(ROOT)"'
$(BUILD)/obj/tests/test_deploy.o: CPPFLAGS += -DLDM_DEPLOY_ROOT='"$(ROOT)"'

$(BUILD)/tests/run_tests: $(TEST_OBJ) $(FUZZ_HARNESS_OBJ) $(SERVER_OBJ) $(COMP_LIB) $(RT_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $$(pkg-config --libs check) $(LDLIBS) $(SERVER_LIBS) -o $@

test: all $(BUILD)/tests/run_tests
	LDM_BUILD=$(BUILD) $(BUILD)/tests/run_tests

# The include and link graphs of compiler/ and runtime/ (tools/depgraph.sh);
# fails on a cycle. DEPGRAPH_DIRS=runtime checks one directory.
DEPGRAPH_DIRS ?= compiler runtime
depgraph: all
	tools/depgraph.sh -b $(BUILD) $(DEPGRAPH_DIRS)

check: deps
	$(MAKE) test
	$(MAKE) test SAN=1
	$(MAKE) test WIDE=1 TEST_SRC="tests/main.c tests/test_gemm.c tests/test_winograd.c tests/test_ops.c"
	$(MAKE) fuzz FUZZ_S=$(FUZZ_CHECK_S)

# ---- fuzzing (tests/fuzz/README.md) ------------------------------------------
# `make fuzz` builds every harness tests/fuzz/fuzz_SURFACE.c with libFuzzer
# (clang, ASan + UBSan) into build-fuzz/ and runs each, one after the other,
# for FUZZ_S seconds on its corpus (tests/fuzz/corpus/SURFACE, the regress
# inputs and what earlier runs found in build-fuzz/corpus/SURFACE); it prints
# executions, exec/s, coverage and crashes per harness and fails on a crash
# (the input is in build-fuzz/crashes/SURFACE/). FUZZ_TARGETS="png prompt"
# runs some. `make check` runs each for FUZZ_CHECK_S seconds.
FUZZ_S       ?= 60
FUZZ_CHECK_S ?= 20
FUZZ_BUILD   := build-fuzz
FUZZ_BINS     = $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz/fuzz_%)

fuzz:
	$(MAKE) FUZZ=1 fuzz-build
	OMP_NUM_THREADS=1 tests/fuzz/run.sh -b $(FUZZ_BUILD) -t $(FUZZ_S) $(FUZZ_TARGETS)

ifeq ($(FUZZ),1)
fuzz-build: $(FUZZ_BINS)

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(SERVER_OBJ) $(COMP_LIB) $(RT_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -DLDM_LIBFUZZER -DLDM_FUZZ_ROOT='"$(ROOT)"' -fsanitize=fuzzer $< \
	    $(SERVER_OBJ) $(COMP_LIB) $(RT_LIB) $(LDFLAGS) -fsanitize=fuzzer $(LDLIBS) $(SERVER_LIBS) -o $@
else
fuzz-build:
	$(MAKE) FUZZ=1 fuzz-build
endif

# ---- the main job: a prompt to a 512x512 image ------------------------------
# With no checkpoint of your own, the demo makes one with RANDOM weights of
# the real SD v1.5 shapes (ldmc randckpt; the image is noise). With a real
# one: make demo WEIGHTS=v1-5-pruned-emaonly.safetensors VOCAB=bpe_simple_vocab_16e6.txt.gz
DEMO_RES    ?= 512
DEMO_STEPS  ?= 20
DEMO_PROMPT ?= a photograph of an astronaut riding a horse
# the CLIP vocabulary is compiled into the executables; VOCAB=FILE passes another copy
VOCAB       ?=
RANDOM_CKPT := $(BUILD)/sd15-random-f16.safetensors
WEIGHTS     ?= $(RANDOM_CKPT)

$(RANDOM_CKPT): | $(BUILD)/ldmc
	@echo "making $@: RANDOM weights with the real SD v1.5 shapes (not a trained model)"
	$(BUILD)/ldmc randckpt --config models/sd1/v1-inference.yaml --dtype f16 --seed 1 -o $@ \
	    models/sd1/clip_text.graph models/sd1/unet.graph models/sd1/vae_encoder.graph models/sd1/vae_decoder.graph

demo: deps all
	$(MAKE) txt2img CONFIG=models/sd1/v1-inference.yaml H=$(DEMO_RES) W=$(DEMO_RES)
	@if [ "$(WEIGHTS)" = "$(RANDOM_CKPT)" ]; then $(MAKE) --no-print-directory $(RANDOM_CKPT); fi
	@mkdir -p $(BUILD)/demo
	$(BUILD)/txt2img-$(DEMO_RES)x$(DEMO_RES)$(ARCH_SUFFIX) --weights $(WEIGHTS) $(if $(VOCAB),--vocab $(VOCAB)) \
	    --prompt "$(DEMO_PROMPT)" --steps $(DEMO_STEPS) --seed 1 -o $(BUILD)/demo/demo-$(DEMO_RES)x$(DEMO_RES).png
	@echo "wrote $(BUILD)/demo/demo-$(DEMO_RES)x$(DEMO_RES).png"

# Benchmarks on random weights of the real SD v1.5 shapes (see tests/bench/bench.sh).
bench: all
	BUILD=$(BUILD) tests/bench/bench.sh

bench-quick: all
	BUILD=$(BUILD) RESOLUTIONS=256 SD2=0 NO_SDXL=1 tests/bench/bench.sh

# The machine's fingerprint alone (FMA peak, stream triad, sgemm, caches),
# the line `make bench` prints first (tests/bench/fingerprint.c).
fingerprint:
	@mkdir -p $(BUILD)/bench
	$(CC) -O2 -march=native -fopenmp -Wall -Wextra -Werror tests/bench/fingerprint.c \
	    -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o $(BUILD)/bench/fingerprint
	@$(BUILD)/bench/fingerprint

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "all Debian packages present"; fi

clean:
	rm -rf build build-san build-fuzz

# ==== txt2img: per-resolution text-to-image executables =====================
#   make txt2img CONFIG=models/sd1/v1-inference.yaml H=512 W=512
#   make txt2img CONFIG=models/sd1/v1-inference.yaml SIZES="512x512 512x768 768x512"
# builds $(BUILD)/txt2img-<H>x<W>, or with SIZES (each HEIGHTxWIDTH, the first
# the default) $(BUILD)/txt2img holding every listed size (TXT2IMG_NAME=...
# names either otherwise); with ARCH=x86-64-v3 or x86-64-v4 (see ARCH above)
# the executable's name ends in -ARCH. For each size S, ldmc compiles the text encoder
# (B <= CHUNKS: a prompt's chunks in one call), the UNet (B <= 2: [uncond,
# cond] in one call; context up to 77 * CHUNKS tokens), both autoencoder
# halves (B=1) and, with TAESD=1 (default), TAESD's two halves
# (models/taesd/, B=1) for CONFIG into $(BUILD)/<name>.d/<net>_S.c, exporting
# <net>_S_model (ldmc --symbol); `ldmc pipeline --size S... --nets ...` writes
# the config's constants per size and the table of the sizes (pipeline.c);
# runtime/apps/txt2img.c + the runtime link them into one -static program
# (dynamic with SAN=1: the sanitizers need the dynamic loader). Config
# overrides: TXT2IMG_DEFS='-D model.params.x=V'. A change of CONFIG,
# TXT2IMG_DEFS, CHUNKS (default 3), CLIP_SKIPS (default 2) or TAESD rebuilds everything; another SIZES list compiles only the
# sizes not compiled yet and writes the table again.
TXT2IMG_GRAPH_DIR ?= models/sd1
TXT2IMG_SIZES      = $(if $(SIZES),$(SIZES),$(if $(and $(H),$(W)),$(H)x$(W)))
TXT2IMG_NAME      ?= $(if $(SIZES),txt2img,txt2img-$(H)x$(W))
TXT2IMG_DIR        = $(BUILD)/$(TXT2IMG_NAME).d
# ARCH=x86-64-v3: the networks' objects in <name>.d/arch-x86-64-v3/, the
# executable <name>-x86-64-v3 (the generated C is the native build's)
TXT2IMG_OBJ_DIR    = $(TXT2IMG_DIR)$(if $(ARCH_SUFFIX),/arch-$(ARCH))
TXT2IMG_EXE        = $(BUILD)/$(TXT2IMG_NAME)$(ARCH_SUFFIX)
# TAESD=1 (default) also compiles TAESD, the tiny autoencoder
# (models/taesd/, 1.2 M parameters, B=1) for each size: --taesd,
# --taesd-encoder and --preview of the executable; TAESD=0 leaves it out.
TAESD             ?= 1
# CONTROLNET=1 also compiles a ControlNet (models/sd1/controlnet.graph, B=2
# as the UNet) and the UNet it steers (unet.graph -D CONTROL=1, net
# unet_control: the same weights as the plain UNet, which stays for runs
# without --control-net) for each size: --control-net, --control-image,
# --control-strength, --guess-mode of the executable (docs/txt2img.md).
CONTROLNET        ?= 0
# sgm configs (SDXL: network_config, conditioner_config) have a second text
# encoder, clip_text2 = clip_text.graph for conditioner embedder
# TXT2IMG_EMBEDDER2 (1: FrozenOpenCLIPEmbedder2), after TAESD's networks.
TXT2IMG_SGM       := $(if $(CONFIG),$(shell grep -qs 'network_config' $(CONFIG) && echo 1))
TXT2IMG_EMBEDDER2 ?= 1
TXT2IMG_GRAPHS     = clip_text unet vae_decoder vae_encoder $(if $(filter 1,$(TAESD)),taesd_decoder taesd_encoder) \
                     $(if $(TXT2IMG_SGM),clip_text2) $(if $(filter 1,$(CONTROLNET)),unet_control controlnet)
# Prompts of up to CHUNKS 75-token chunks (the UNet's context length is a
# run-time extent up to 77 * CHUNKS: a 1-chunk prompt costs what it did);
# the text encoder encodes a prompt's chunks in one call and gives CLIP skip
# 1..CLIP_SKIPS, with the inputs for textual-inversion vectors (EMBEDS=1).
CHUNKS            ?= 3
CLIP_SKIPS        ?= 2
TXT2IMG_B_clip_text   = $(CHUNKS)
TXT2IMG_B_unet        = 2
TXT2IMG_B_vae_decoder = 1
TXT2IMG_B_vae_encoder = 1
TXT2IMG_B_controlnet  = 2
TXT2IMG_D_controlnet  = -D CHUNKS=$(CHUNKS)
TXT2IMG_D_clip_text   = -D CHUNKS=$(CHUNKS) -D CLIP_SKIPS=$(CLIP_SKIPS) -D EMBEDS=1
TXT2IMG_D_unet        = -D CHUNKS=$(CHUNKS)
TXT2IMG_B_clip_text2  = $(CHUNKS)
TXT2IMG_D_clip_text2  = -D CHUNKS=$(CHUNKS) -D CLIP_SKIPS=$(CLIP_SKIPS) -D EMBEDS=1 -D EMBEDDER=$(TXT2IMG_EMBEDDER2)
TXT2IMG_LIBS       = -lopenblas -ljansson -lpng -lnettle -lz -lm -lpthread
# --listen: libmicrohttpd, statically from Debian's libmicrohttpd.a; its
# HTTPS half refers to GnuTLS, which cannot link statically on Debian (no
# libp11-kit.a): mhd_notls.c stubs the GnuTLS functions (TLS is never
# enabled; docs/server.md). The dynamic SAN=1 build links the real ones.
# The server's objects follow ARCH like the rest of the executable.
TXT2IMG_SERVER_OBJ = $(EXE_OBJ)/runtime/apps/server.o $(BUILD)/obj/runtime/apps/server_page.o
ifeq ($(SAN),1)
TXT2IMG_STATIC     =
TXT2IMG_SERVER     = $(TXT2IMG_SERVER_OBJ)
else
TXT2IMG_STATIC     = -static
TXT2IMG_SERVER     = $(TXT2IMG_SERVER_OBJ) $(EXE_OBJ)/runtime/apps/mhd_notls.o
endif
# HxW -> H, W
size_h = $(word 1,$(subst x, ,$(1)))
size_w = $(word 2,$(subst x, ,$(1)))
# the args of ldmc pipeline for a size list
size_flags = $(foreach s,$(1),--size $(s))
comma := ,
empty :=
space := $(empty) $(empty)

.PHONY: txt2img txt2img-force
ifeq ($(and $(CONFIG),$(TXT2IMG_SIZES)),)
txt2img:
	@echo "usage: make txt2img CONFIG=<config.yaml> H=<pixels> W=<pixels> [BUILD=<dir>] [ARCH=native|x86-64-v3|x86-64-v4]" >&2; \
	 echo "       make txt2img CONFIG=<config.yaml> SIZES=\"<H>x<W> <H>x<W> ...\" [BUILD=<dir>] [ARCH=...]" >&2; exit 2
else ifneq ($(and $(SIZES),$(or $(H),$(W))),)
txt2img:
	@echo "make txt2img: give SIZES=\"<H>x<W> ...\" or H= and W=, not both" >&2; exit 2
else
txt2img: $(TXT2IMG_EXE)

# what every network depends on (config, overrides), and the size list
$(TXT2IMG_DIR)/build.id: txt2img-force
	@mkdir -p $(@D)
	@echo '$(abspath $(CONFIG)) $(TXT2IMG_DEFS) CHUNKS=$(CHUNKS) CLIP_SKIPS=$(CLIP_SKIPS) TAESD=$(TAESD)$(if $(filter 1,$(CONTROLNET)), CONTROLNET=1)' > $@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

$(TXT2IMG_DIR)/sizes.id: txt2img-force
	@mkdir -p $(@D)
	@echo '$(TXT2IMG_SIZES)' > $@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

$(TXT2IMG_DIR)/pipeline.c: $(CONFIG) $(BUILD)/ldmc $(TXT2IMG_DIR)/build.id $(TXT2IMG_DIR)/sizes.id
	$(BUILD)/ldmc pipeline --config $(CONFIG) $(call size_flags,$(TXT2IMG_SIZES)) \
	    --nets $(subst $(space),$(comma),$(TXT2IMG_GRAPHS)) $(TXT2IMG_DEFS) -o $@

# <net>_<H>x<W>.c for each size (after pipeline.c, which checks the sizes)
define txt2img_size_rule
$(TXT2IMG_DIR)/%_$(1).c: $(TXT2IMG_GRAPH_DIR)/%.graph $(wildcard models/common/*.graph) $(CONFIG) $(BUILD)/ldmc \
                         $(TXT2IMG_DIR)/build.id | $(TXT2IMG_DIR)/pipeline.c
	$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=$$(TXT2IMG_B_$$*) \
	    $$(TXT2IMG_D_$$*) $(TXT2IMG_DEFS) --symbol $$*_$(1) -o $$@

# sgm: the second text encoder from the same graph (-D EMBEDDER)
$(TXT2IMG_DIR)/clip_text2_$(1).c: $(TXT2IMG_GRAPH_DIR)/clip_text.graph $(wildcard models/common/*.graph) $(CONFIG) \
                                  $(BUILD)/ldmc $(TXT2IMG_DIR)/build.id | $(TXT2IMG_DIR)/pipeline.c
	$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=$(CHUNKS) \
	    $$(TXT2IMG_D_clip_text2) $(TXT2IMG_DEFS) --symbol clip_text2_$(1) -o $$@
# the UNet a ControlNet steers (CONTROLNET=1): unet.graph with CONTROL=1
$(TXT2IMG_DIR)/unet_control_$(1).c: $(TXT2IMG_GRAPH_DIR)/unet.graph $(wildcard models/common/*.graph) $(CONFIG) $(BUILD)/ldmc \
                         $(TXT2IMG_DIR)/build.id | $(TXT2IMG_DIR)/pipeline.c
	$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=$(TXT2IMG_B_unet) \
	    $(TXT2IMG_D_unet) -D CONTROL=1 $(TXT2IMG_DEFS) --symbol unet_control_$(1) -o $$@

# TAESD's halves (no config: the graph is fixed; B=1)
$(TXT2IMG_DIR)/taesd_%_$(1).c: models/taesd/taesd_%.graph models/taesd/taesd.graph $(BUILD)/ldmc \
                               $(TXT2IMG_DIR)/build.id | $(TXT2IMG_DIR)/pipeline.c
	$(BUILD)/ldmc $$< -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=1 --symbol taesd_$$*_$(1) -o $$@
endef
$(foreach s,$(TXT2IMG_SIZES),$(eval $(call txt2img_size_rule,$(s))))

$(TXT2IMG_OBJ_DIR)/%.o: $(TXT2IMG_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(TXT2IMG_EXE): $(EXE_OBJ)/runtime/apps/txt2img.o $(TXT2IMG_SERVER) \
                          $(foreach s,$(TXT2IMG_SIZES),$(TXT2IMG_GRAPHS:%=$(TXT2IMG_OBJ_DIR)/%_$(s).o)) \
                          $(TXT2IMG_OBJ_DIR)/pipeline.o $(EXE_RT_LIB)
	$(CC) $(TXT2IMG_STATIC) $(LDFLAGS) $^ $(SERVER_LIBS) $(TXT2IMG_LIBS) -o $@

-include $(wildcard $(TXT2IMG_OBJ_DIR)/*.d)
endif
# ==== end of txt2img ==========================================================

# ==== sample: per-resolution LDM sampling executables =======================
#   make sample CONFIG=models/ldm/celebahq-ldm-vq-4.yaml H=256 W=256
#   make sample CONFIG=models/ldm/celebahq-ldm-vq-4.yaml SIZES="256x256 256x384"
# builds $(BUILD)/sample-<H>x<W>, or with SIZES $(BUILD)/sample holding every
# listed size (SAMPLE_NAME=... names either otherwise): DDIM sampling for the
# LDM paper's unconditional models and, with --class N, the
# class-conditional ones (cond stage ClassEmbedder, classifier-free guidance).
# `ldmc pipeline` writes the config's constants per size and the table of
# the sizes to $(BUILD)/<name>.d/, and `kind` there records which of the two
# the config is ("uncond" or "class"; other conditionings stop the build
# with a message). ldmc then compiles, per size S, the UNet (B=1, or B=2 =
# [uncond, cond] for "class"), the decoder (B=1, VQ or KL) and class_embed
# (B=1; for "uncond" an empty table in its place) as <net>_S.c exporting
# <net>_S_model, and runtime/apps/sample.c + the runtime link them into one
# -static program (dynamic with SAN=1). Config overrides:
# SAMPLE_DEFS='-D model.params.x=V'. A change of CONFIG or SAMPLE_DEFS
# rebuilds everything; another SIZES list compiles only the new sizes.
SAMPLE_GRAPH_DIR ?= models/ldm
SAMPLE_SIZES      = $(if $(SIZES),$(SIZES),$(if $(and $(H),$(W)),$(H)x$(W)))
SAMPLE_NAME      ?= $(if $(SIZES),sample,sample-$(H)x$(W))
SAMPLE_DIR        = $(BUILD)/$(SAMPLE_NAME).d
SAMPLE_OBJ_DIR    = $(SAMPLE_DIR)$(if $(ARCH_SUFFIX),/arch-$(ARCH))
SAMPLE_EXE        = $(BUILD)/$(SAMPLE_NAME)$(ARCH_SUFFIX)
SAMPLE_GRAPHS     = unet vae_decoder class_embed
SAMPLE_DSL        = $(wildcard models/common/*.graph models/sd1/*.graph $(SAMPLE_GRAPH_DIR)/*.graph)

.PHONY: sample sample-force
ifeq ($(and $(CONFIG),$(SAMPLE_SIZES)),)
sample:
	@echo "usage: make sample CONFIG=<config.yaml> H=<pixels> W=<pixels> [BUILD=<dir>] [SAMPLE_NAME=<name>]" >&2; \
	 echo "       make sample CONFIG=<config.yaml> SIZES=\"<H>x<W> <H>x<W> ...\" [BUILD=<dir>] [SAMPLE_NAME=<name>]" >&2; \
	 exit 2
else ifneq ($(and $(SIZES),$(or $(H),$(W))),)
sample:
	@echo "make sample: give SIZES=\"<H>x<W> ...\" or H= and W=, not both" >&2; exit 2
else
sample: $(SAMPLE_EXE)

$(SAMPLE_DIR)/build.id: sample-force
	@mkdir -p $(@D)
	@echo '$(abspath $(CONFIG)) $(SAMPLE_DEFS)' > $@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

$(SAMPLE_DIR)/sizes.id: sample-force
	@mkdir -p $(@D)
	@echo '$(SAMPLE_SIZES)' > $@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

$(SAMPLE_DIR)/pipeline.c: $(CONFIG) $(BUILD)/ldmc $(SAMPLE_DIR)/build.id $(SAMPLE_DIR)/sizes.id
	$(BUILD)/ldmc pipeline --config $(CONFIG) $(call size_flags,$(SAMPLE_SIZES)) \
	    --nets $(subst $(space),$(comma),$(SAMPLE_GRAPHS)) $(SAMPLE_DEFS) -o $@

# from the first size's constants (the conditioning is the same for all)
$(SAMPLE_DIR)/kind: $(SAMPLE_DIR)/pipeline.c
	@if grep -q '^ *\.cond_stage = "ldm\.modules\.encoders\.modules\.ClassEmbedder",' $<; then echo class > $@; \
	elif grep -q '^ *\.conditioning_key = "none",' $<; then echo uncond > $@; \
	else echo "make sample: $(CONFIG): not an unconditional (cond_stage_config: __is_unconditional__) or" \
	          "class-conditional (ClassEmbedder) LDM; text-conditioned models: make txt2img" >&2; exit 1; fi

define sample_size_rule
$(SAMPLE_DIR)/unet_$(1).c: $(SAMPLE_GRAPH_DIR)/unet.graph $(SAMPLE_DSL) $(CONFIG) $(BUILD)/ldmc $(SAMPLE_DIR)/build.id \
                           $(SAMPLE_DIR)/kind
	@B=$$$$(if [ "$$$$(cat $(SAMPLE_DIR)/kind)" = class ]; then echo 2; else echo 1; fi); \
	echo "$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=$$$$B $(SAMPLE_DEFS) --symbol unet_$(1) -o $$@"; \
	$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=$$$$B $(SAMPLE_DEFS) --symbol unet_$(1) -o $$@

$(SAMPLE_DIR)/vae_decoder_$(1).c: $(SAMPLE_GRAPH_DIR)/vae_decoder.graph $(SAMPLE_DSL) $(CONFIG) $(BUILD)/ldmc \
                                  $(SAMPLE_DIR)/build.id $(SAMPLE_DIR)/kind
	$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=1 $(SAMPLE_DEFS) \
	    --symbol vae_decoder_$(1) -o $$@

$(SAMPLE_DIR)/class_embed_$(1).c: $(SAMPLE_GRAPH_DIR)/class_embed.graph $(SAMPLE_DSL) $(CONFIG) $(BUILD)/ldmc \
                                  $(SAMPLE_DIR)/build.id $(SAMPLE_DIR)/kind
	@if [ "$$$$(cat $(SAMPLE_DIR)/kind)" = class ]; then \
	    echo "$(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=1 $(SAMPLE_DEFS) --symbol class_embed_$(1) -o $$@"; \
	    $(BUILD)/ldmc $$< --config $(CONFIG) -D H=$(call size_h,$(1)) -D W=$(call size_w,$(1)) -D B=1 $(SAMPLE_DEFS) --symbol class_embed_$(1) -o $$@; \
	else \
	    printf '%s\n' '/* $(CONFIG) has no ClassEmbedder: no class_embed network (sample.c checks .forward). */' \
	        '#include "model.h"' 'const LdmModel class_embed_$(1)_model = {.name = "class_embed (none)"};' > $$@; \
	fi
endef
$(foreach s,$(SAMPLE_SIZES),$(eval $(call sample_size_rule,$(s))))

$(SAMPLE_OBJ_DIR)/%.o: $(SAMPLE_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# linked as the txt2img executables are
$(SAMPLE_EXE): $(EXE_OBJ)/runtime/apps/sample.o \
                         $(foreach s,$(SAMPLE_SIZES),$(SAMPLE_GRAPHS:%=$(SAMPLE_OBJ_DIR)/%_$(s).o)) \
                         $(SAMPLE_OBJ_DIR)/pipeline.o $(EXE_RT_LIB)
	$(CC) $(TXT2IMG_STATIC) $(LDFLAGS) $^ $(TXT2IMG_LIBS) -o $@

-include $(wildcard $(SAMPLE_OBJ_DIR)/*.d)
endif
# ==== end of sample ===========================================================

-include $(shell find $(BUILD)/obj $(if $(ARCH_DIR),$(ARCH_DIR)/obj) -name '*.d' 2>/dev/null)
