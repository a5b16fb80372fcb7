#!/usr/bin/env python3
"""make_seeds.py - (re)write the seed corpora tests/fuzz/corpus/SURFACE/ from
the repository's own files and the shared goldens (small files only), and
a few made here (safetensors and PNG files of every layout the readers
accept). Run from the repository root: python3 tests/fuzz/make_seeds.py
[SHARED] (default ../shared). Plain Python, no numpy."""
import glob, json, os, re, shlex, struct, sys, zlib

SHARED = sys.argv[1] if len(sys.argv) > 1 else "../shared"
OUT = "tests/fuzz/corpus"

def put(surface, name, data):
    d = os.path.join(OUT, surface)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# ---- dsl: tests/graphs/*.graph with their .args as "#config"/"#D" lines ----
for g in sorted(glob.glob("tests/graphs/*.graph")):
    base = os.path.basename(g)[:-6]
    text = open(g).read()
    head = ""
    args = g[:-6] + ".args"
    if os.path.exists(args):
        a = shlex.split(open(args).read())
        i = 0
        while i < len(a):
            if a[i] == "--config": head += "#config %s\n" % a[i + 1]; i += 2
            elif a[i] == "-D": head += "#D %s\n" % a[i + 1]; i += 2
            else: i += 1
    put("dsl", base + ".graph", head + text)
# the real networks at a toy size, imports seen from tests/graphs/
for g, defs in [("models/ldm/class_embed.graph", "#config ldm/cin256-v2.yaml\n#D B=1\n"),
                ("models/sd1/vae_decoder.graph", "#config sd1/v1-inference.yaml\n#D H=16\n#D W=16\n#D B=1\n")]:
    text = open(g).read()
    d = os.path.dirname(g)  # models/sd1 -> ../../models/sd1
    text = re.sub(r'import "([^"]*)"', lambda m: 'import "../../%s"' % os.path.normpath(os.path.join(d, m.group(1))), text)
    put("dsl", os.path.basename(d) + "_" + os.path.basename(g), defs + text)

# ---- config: the configs of the repository, one with -D lines ----
for y in sorted(glob.glob("models/*/*.yaml") + glob.glob("tests/graphs/*.yaml") + glob.glob("tests/sample/*.yaml")):
    put("config", y.replace("/", "_"), open(y, "rb").read())
put("config", "overrides.yaml", open("tests/graphs/small.yaml").read() +
    "#-D model.params.depth=3\n#-D model.params.mult=[1, 2]\n#-D model.params.new.deep.key='a b'\n"
    "#-D model.params.mult.0=0x10\n#-D a..b=1\n")
put("config", "anchors.yaml", "base: &b {x: 1, y: [1, 2]}\nd:\n  <<: *b\n  z: !!str 3\nt: 2001-12-14\ns: 1:30\nf: .inf\n")

# ---- safetensors: checkpoint, LoRA, embedding, every dtype ----
DT = {"F32": ("<f", 4), "F16": ("<e", 2), "F64": ("<d", 8), "I64": ("<q", 8), "I32": ("<i", 4),
      "I8": ("<b", 1), "U8": ("<B", 1), "BOOL": ("<B", 1), "I16": ("<h", 2)}

def st(tensors, meta=None, align=8):
    """tensors: [(name, dtype, shape, values)] -> safetensors bytes."""
    hdr, blob = {}, b""
    if meta: hdr["__metadata__"] = meta
    for name, dt, shape, vals in tensors:
        if dt == "BF16":
            raw = b"".join(struct.pack("<f", v)[2:] for v in vals)
        else:
            fmt, _ = DT[dt]
            raw = b"".join(struct.pack(fmt, v) for v in vals)
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % align)
    return struct.pack("<Q", len(h)) + h + blob

def n(shape):
    k = 1
    for s in shape: k *= s
    return k

W = [("model.diffusion_model.input_blocks.1.1.proj_in.weight", [4, 4, 1, 1]),
     ("model.diffusion_model.input_blocks.1.1.proj_in.bias", [4]),
     ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", [4, 4]),
     ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", [4, 4, 3, 3]),
     ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", [4, 4])]
for dt in ["F32", "F16", "BF16", "F64"]:
    ts = [(k, dt, s, [0.01 * i for i in range(n(s))]) for k, s in W]
    ts.append(("cond_stage_model.transformer.text_model.embeddings.position_ids", "I64", [1, 4], [0, 1, 2, 3]))
    ts.append(("a", dt, [], [1.5]))
    put("safetensors", "ckpt_%s.safetensors" % dt.lower(), st(ts, {"format": "pt"}))
put("safetensors", "ints.safetensors", st([("i%s" % d, d, [3], [1, 0, 1]) for d in ["I32", "I16", "I8", "U8", "BOOL"]]))
lora = []
for prefix, shape in [("lora_unet_down_blocks_0_attentions_0_proj_in", [4, 4, 1, 1]),
                      ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", [4, 4]),
                      ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", [4, 4]),
                      ("lora_unet_down_blocks_0_resnets_0_conv1", [4, 4, 3, 3])]:
    r = 2
    down = [r, shape[1]] + shape[2:]
    up = [shape[0], r] + [1] * (len(shape) - 2)
    lora += [(prefix + ".lora_down.weight", "F16", down, [0.1] * n(down)),
             (prefix + ".lora_up.weight", "F16", up, [0.2] * n(up)),
             (prefix + ".alpha", "F32", [], [1.0])]
lora += [("lora_unet_nothing.lora_down.weight", "F32", [1, 4], [0.0] * 4),
         ("lora_unet_nothing.lora_up.weight", "F32", [4, 1], [0.0] * 4)]
put("safetensors", "lora.safetensors", st(lora, {"ss_network_dim": "2"}))
put("safetensors", "emb_f32.safetensors", st([("emb_params", "F32", [2, 4], [0.5] * 8)]))
put("safetensors", "emb_string_to_param.safetensors", st([("string_to_param.*", "F16", [4], [0.25] * 4)]))
put("safetensors", "emb_one.safetensors", st([("x", "BF16", [1, 768], [0.0] * 768)]))
put("safetensors", "empty.safetensors", st([]))
tiny = os.path.join(SHARED, "goldens/sd1-adapters/tinyemb.safetensors")
if os.path.exists(tiny):
    put("safetensors", "tinyemb.safetensors", open(tiny, "rb").read())

# ---- png: every colour type and depth libpng hands the reader ----
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)

def png(w, h, ctype, depth, rows, plte=None, trns=None, interlace=0):
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if plte: out += chunk(b"PLTE", plte)
    if trns: out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")

w = h = 8
put("png", "rgb8.png", png(w, h, 2, 8, [bytes((x * 30 + y) % 256 for x in range(w * 3)) for y in range(h)]))
put("png", "gray8.png", png(w, h, 0, 8, [bytes((x * 32) % 256 for x in range(w)) for y in range(h)]))
put("png", "gray1.png", png(w, h, 0, 1, [bytes([0xA5]) for y in range(h)]))
put("png", "graya8.png", png(w, h, 4, 8, [bytes(x % 256 for x in range(w * 2)) for y in range(h)]))
put("png", "rgba8.png", png(w, h, 6, 8, [bytes((x * 9) % 256 for x in range(w * 4)) for y in range(h)]))
put("png", "rgb16.png", png(4, 4, 2, 16, [bytes(x % 256 for x in range(4 * 6)) for y in range(4)]))
put("png", "pal4.png", png(w, h, 3, 4, [bytes([0x01, 0x23, 0x01, 0x23]) for y in range(h)],
                             plte=bytes(range(12)), trns=b"\x80"))
put("png", "odd.png", png(3, 5, 2, 8, [bytes(9) for y in range(5)]))
hint = os.path.join(SHARED, "goldens/sd1-controlnet/hint_edges.png")
if os.path.exists(hint):
    put("png", "hint_edges.png", open(hint, "rb").read())

# ---- prompt: the golden prompts (tokenizer and webui parser) ----
k = 0
for path in [os.path.join(SHARED, "goldens/clip_tokenizer/tokens.jsonl"),
             os.path.join(SHARED, "goldens/sd1-adapters/prompt_parse.jsonl")]:
    if not os.path.exists(path): continue
    seen = set()
    for line in open(path, encoding="utf-8"):
        p = json.loads(line)["prompt"]
        if p in seen or len(p) > 2000: continue
        seen.add(p)
        put("prompt", "golden_%03d.txt" % k, p.encode("utf-8", "surrogatepass"))
        k += 1
for i, p in enumerate(["a (photo:1.2) of a [cat] <lora:style:0.8:0.5> BREAK ((dog))",
                       "<lora:x:te=0.5:unet=1:dyn=4> \\(escaped\\) (a:1e3) [b:0.5]",
                       "cat a photo style fuzzword-emb, " * 20, "caf\u00e9 \u65e5\u672c \U0001F600 \xff"]):
    put("prompt", "made_%d.txt" % i, p.encode("utf-8", "surrogatepass"))

# ---- promptfile ----
put("promptfile", "plain.txt", "a photograph of an astronaut\n\n  \nriding a horse\r\nlast line without newline")
put("promptfile", "options.txt", '--prompt "a cat" --seed 3 --steps 10\n--prompt \'it\'\'s\' --negative_prompt "a \\"b\\""\n'
    "a \\ b 'c d' \"e\\\\f\"\n--prompt \"unterminated\n")
put("promptfile", "empty.txt", "")
put("promptfile", "jsonl.txt", (
    '{"prompt": "a red fox <lora:tiny:0.8>", "negative_prompt": "blurry", "seed": 5, "steps": 20, "cfg_scale": 7.5, '
    '"sampler": "DPM++ 2M Karras", "size": "512x768"}\n'
    '{"prompt": "an owl", "width": 512, "height": 512, "sampler_name": "Euler a"}\n'
    '{"prompt": "x", "steps": "3"}\n{"prompt": "x", "stepz": 3}\n{"prompt": "x", "size": "512x", "width": 3}\n'
    '[1, 2]\n{"prompt": "x",\n--prompt a cat --sampler_name \'DPM++ 2M\' --seed 3\na plain prompt\n'))
put("promptfile", "lora_shard.txt", "--lora style.safetensors:0.7 --lora a:b:c --lora :1 --lora x:nan --shard 1/3 --shard 3/3\n")
