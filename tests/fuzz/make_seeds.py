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
# (and the SD 2.x text tower, a narrow SDXL UNet and a narrow ControlNet
# and controlled UNet: config values shrunk by "#D model.params...=")
NET = "#D model.params.network_config.params."
UC = "#D model.params.unet_config.params."
for g, defs, name in [
        ("models/ldm/class_embed.graph", "#config ldm/cin256-v2.yaml\n#D B=1\n", None),
        ("models/sd1/vae_decoder.graph", "#config sd1/v1-inference.yaml\n#D H=16\n#D W=16\n#D B=1\n", None),
        ("models/sd1/clip_text.graph", "#config sd2/v2-inference-v.yaml\n#D B=1\n", "sd2_clip_text.graph"),
        ("models/sd1/unet.graph", "#config sdxl/sd_xl_base.yaml\n#D H=64\n#D W=64\n#D B=1\n" + NET +
         "model_channels=32\n" + NET + "transformer_depth=[0,1,1]\n" + NET + "num_head_channels=16\n",
         "sdxl_unet.graph"),
        ("models/sd1/controlnet.graph", "#config sd1/v1-inference.yaml\n#D H=64\n#D W=64\n#D B=1\n" + UC +
         "model_channels=32\n", None),
        ("models/sd1/unet.graph", "#config sd1/v1-inference.yaml\n#D H=64\n#D W=64\n#D B=2\n#D CONTROL=1\n" + UC +
         "model_channels=32\n", "sd1_unet_control.graph")]:
    text = open(g).read()
    d = os.path.dirname(g)  # models/sd1 -> ../../models/sd1
    text = re.sub(r'import "([^"]*)"', lambda m: 'import "../../%s"' % os.path.normpath(os.path.join(d, m.group(1))), text)
    put("dsl", name or os.path.basename(d) + "_" + os.path.basename(g), defs + text)

# ---- config: the configs of the repository, one with -D lines ----
for y in sorted(glob.glob("models/*/*.yaml") + glob.glob("tests/graphs/*.yaml") + glob.glob("tests/sample/*.yaml")):
    put("config", y.replace("/", "_"), open(y, "rb").read())
# sgm's config as JSON (its YAML's JSON subset: the golden set's sdxl-tiny)
xl_json = os.path.join(SHARED, "goldens/sdxl-tiny/config.json")
if os.path.exists(xl_json):
    put("config", "sdxl-tiny_config.json", open(xl_json, "rb").read())
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
# SD 2.x and SDXL LoRAs: the OpenCLIP towers' packed q/k/v thirds, mlp and
# out_proj names, SDXL's te1 and CompVis-path UNet names (the harness's
# key table has those weights at toy sizes)
for name, mods in [("lora_sd2.safetensors", [("lora_te_text_model_encoder_layers_0_self_attn_q_proj", [4, 4]),
                                              ("lora_te_text_model_encoder_layers_0_self_attn_v_proj", [4, 4]),
                                              ("lora_te_text_model_encoder_layers_0_self_attn_out_proj", [4, 4])]),
                   ("lora_sdxl.safetensors", [("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", [4, 4]),
                                               ("lora_te2_text_model_encoder_layers_0_self_attn_k_proj", [4, 4]),
                                               ("lora_te2_text_model_encoder_layers_0_mlp_fc1", [16, 4]),
                                               ("lora_unet_input_blocks_1_0_in_layers_2", [4, 4, 3, 3])])]:
    ts = []
    for prefix, shape in mods:
        down = [2, shape[1]] + shape[2:]
        up = [shape[0], 2] + [1] * (len(shape) - 2)
        ts += [(prefix + ".lora_down.weight", "F32", down, [0.1] * n(down)),
               (prefix + ".lora_up.weight", "F16", up, [0.2] * n(up)),
               (prefix + ".alpha", "F32", [], [1.0])]
    put("safetensors", name, st(ts))
put("safetensors", "emb_f32.safetensors", st([("emb_params", "F32", [2, 4], [0.5] * 8)]))
put("safetensors", "emb_string_to_param.safetensors", st([("string_to_param.*", "F16", [4], [0.25] * 4)]))
put("safetensors", "emb_one.safetensors", st([("x", "BF16", [1, 768], [0.0] * 768)]))
put("safetensors", "emb_sdxl.safetensors", st([("clip_g", "F16", [2, 4], [0.5] * 8), ("clip_l", "F32", [2, 4], [0.25] * 8)]))
put("safetensors", "empty.safetensors", st([]))
tiny = os.path.join(SHARED, "goldens/sd1-adapters/tinyemb.safetensors")
if os.path.exists(tiny):
    put("safetensors", "tinyemb.safetensors", open(tiny, "rb").read())

# ---- ckpt: PyTorch zip checkpoints pickled by Python's own pickler ----
# torch.save's layout without torch: stand-in modules named like torch's so
# that pickle writes the same GLOBALs, the storages as persistent ids, and
# each tensor reduced to torch._utils._rebuild_tensor_v2 (protocol 2).
import collections, io, pickle, types, zipfile

def fake_module(name, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        if callable(v) and not isinstance(v, type):
            v.__module__, v.__qualname__, v.__name__ = name, k, k
        elif isinstance(v, type):
            v.__module__, v.__qualname__ = name, k
        setattr(m, k, v)
    sys.modules[name] = m
    return m

def _rebuild_tensor_v2(*a): pass
def _scalar(*a): pass
class _Storage: pass
STYPES = {dt: type(n, (), {}) for dt, n in [("F32", "FloatStorage"), ("F16", "HalfStorage"), ("BF16", "BFloat16Storage"),
                                              ("F64", "DoubleStorage"), ("I64", "LongStorage"), ("U8", "ByteStorage")]}
fake_module("torch", **{t.__name__: t for t in STYPES.values()})
fake_module("torch._utils", _rebuild_tensor_v2=_rebuild_tensor_v2)
class dtype:
    def __init__(self, s): self.s = s
    def __reduce__(self): return (dtype, (self.s, False, True), (3, "<", None, None, None, -1, -1, 0))
    def __setstate__(self, st): pass
fake_module("numpy", dtype=dtype)
fake_module("numpy.core")
fake_module("numpy.core.multiarray", scalar=_scalar)
class ModelCheckpoint: pass
fake_module("pytorch_lightning")
fake_module("pytorch_lightning.callbacks")
fake_module("pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint)

class Scalar:
    def __reduce__(self): return (_scalar, (dtype("f8"), struct.pack("<d", 0.25)))

class StorageRef:
    """A tensor's storage: pickled as torch's persistent id."""
    def __init__(self, t): self.t = t

class Tensor:
    def __init__(self, key, dt, shape, raw):
        self.key, self.dt, self.shape, self.raw = key, dt, shape, raw
    def __reduce_ex__(self, proto):
        stride, k = [], 1
        for s in reversed(self.shape): stride.insert(0, k); k *= s
        return (_rebuild_tensor_v2, (StorageRef(self), 0, tuple(self.shape), tuple(stride), False,
                                     collections.OrderedDict()))

class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            t = obj.t
            return ("storage", STYPES[t.dt], t.key, "cpu", n(t.shape))
        return None

def ckpt(tensors, nested=True, deflate=False, top="archive", zip64=False, wrap=None):
    """tensors: [(name, dtype, shape, values)] -> the bytes of a torch.save zip
    (wrap: a function of the tensors' OrderedDict giving the object saved)."""
    sd, raws = collections.OrderedDict(), []
    for i, (name, dt, shape, vals) in enumerate(tensors):
        if dt == "BF16": raw = b"".join(struct.pack("<f", v)[2:] for v in vals)
        else: raw = b"".join(struct.pack(DT[dt][0], v) for v in vals)
        sd[name] = Tensor(str(i), dt, shape, raw)
        raws.append(raw)
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    obj = {"epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
           "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": Scalar()}}} if nested else sd
    if wrap: obj = wrap(sd)
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(obj)
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        def add(name, data, m):
            zi = zipfile.ZipInfo(top + "/" + name, date_time=(2022, 8, 22, 0, 0, 0))
            zi.compress_type = m
            with z.open(zi, "w", force_zip64=zip64) as f: f.write(data)
        add("data.pkl", buf.getvalue(), zipfile.ZIP_STORED)
        add("byteorder", b"little", zipfile.ZIP_STORED)
        for i, raw in enumerate(raws): add("data/%d" % i, raw, method)
        add("version", b"3\n", zipfile.ZIP_STORED)
    return out.getvalue()

CK = [("model.diffusion_model.input_blocks.1.1.proj_in.weight", [4, 4, 1, 1]),
      ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", [4, 4]),
      ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", [4, 4])]
for dt, kw in [("F32", {}), ("F16", {"nested": False, "deflate": True, "top": "v1-5-pruned-emaonly"}),
               ("BF16", {"zip64": True})]:
    ts = [(k, dt, s, [0.01 * i for i in range(n(s))]) for k, s in CK]
    ts.append(("cond_stage_model.transformer.text_model.embeddings.position_ids", "I64", [1, 4], [0, 1, 2, 3]))
    ts.append(("a", dt, [], [1.5]))
    put("ckpt", "ckpt_%s.ckpt" % dt.lower(), ckpt(ts, **kw))
put("ckpt", "empty_state_dict.ckpt", ckpt([], nested=False))
# a textual-inversion embedding as the webui's training saves it (.pt):
# 2 vectors of width 4, 0.125 * i, under string_to_param's '*'
put("ckpt", "embedding_tinyemb.pt", ckpt([("*", "F32", [2, 4], [0.125 * i for i in range(8)])], wrap=lambda sd: {
    "string_to_token": {"*": 265}, "string_to_param": {"*": sd["*"]}, "name": "tinyemb", "step": 100,
    "sd_checkpoint": "cc6cb27103", "sd_checkpoint_name": "v1-5-pruned-emaonly"}))
# fuzz_ckpt's --vae base (a checkpoint with an autoencoder) and a VAE file as published (no prefix)
VAE = [("decoder.conv_in.weight", [4, 2, 3, 3]), ("decoder.conv_in.bias", [4]), ("post_quant_conv.weight", [2, 2, 1, 1]),
       ("encoder.conv_out.bias", [4]), ("quant_conv.bias", [4])]
put("ckpt", "ckpt_vae_base.ckpt", ckpt([("first_stage_model." + k, "F32", s, [0.5] * n(s)) for k, s in VAE] +
                                       [("model.diffusion_model.out.2.bias", "F32", [4], [0.0] * 4)], nested=False))
put("ckpt", "vae_stripped.ckpt", ckpt([(k, "F16", s, [0.25] * n(s)) for k, s in VAE], nested=False))
# the pickles alone (fuzz_ckpt wraps an input that is not a zip into an archive)
for name in ["ckpt_f32", "ckpt_f16"]:
    with zipfile.ZipFile(os.path.join(OUT, "ckpt", name + ".ckpt")) as z:
        pk = [x for x in z.namelist() if x.endswith("/data.pkl")][0]
        put("ckpt", name + ".pkl", z.read(pk))

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
