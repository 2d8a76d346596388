"""The UNet alone, with one network type, through 2 steps of forward + backward + AdamW on random inputs:
peak RSS after each phase (how bench/results/sdxl_variants_memory.md located DoRA's and LoCon's memory).

    OMP_NUM_THREADS=1 .venv/bin/python bench/unet_memory_probe.py sd1|sdxl lora|dora-in|dora-out|locon 64
"""
import resource, sys, time, os, json
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from trainer.config import NetworkSection
from trainer.models.base import Base
from trainer.models.random_arch import build_random
from trainer.adapter.network import build_network

fam, variant, px = sys.argv[1], sys.argv[2], int(sys.argv[3])
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
def cur():
    with open("/proc/self/status") as f:
        for l in f:
            if l.startswith("VmRSS"): return int(l.split()[1]) / 1e6
torch.manual_seed(0)
unet = build_random(fam, ("unet",), device="cpu")["unet"]
unet.requires_grad_(False)
print("built", rss(), cur(), flush=True)
base = Base(family=fam, unet=unet, vae=None, text_encoders=[], tokenizers=[], scheduler=None)
kw = {"lora": {}, "dora": {"use_dora": True}, "dora-in": {"use_dora": True, "dora_axis": "in"}, "dora-out": {"use_dora": True, "dora_axis": "out"}, "locon": {"conv": True}}[variant]
net = build_network(base, NetworkSection(rank=16, alpha=8, **kw))
print("injected", rss(), cur(), flush=True)
opt = torch.optim.AdamW(net.all_params(), lr=1e-4)
lat = px // 8
ctx_dim = unet.config.cross_attention_dim
for step in range(2):
    x = torch.randn(1, 4, lat, lat)
    ctx = torch.randn(1, 77, ctx_dim)
    kw2 = {}
    if fam == "sdxl":
        kw2["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.tensor([[px, px, 0, 0, px, px]], dtype=torch.float32)}
    out = unet(x, 500, encoder_hidden_states=ctx, **kw2).sample
    print(step, "fwd", rss(), cur(), flush=True)
    out.float().pow(2).mean().backward()
    print(step, "bwd", rss(), cur(), flush=True)
    opt.step(); opt.zero_grad(set_to_none=True)
    print(step, "opt", rss(), cur(), flush=True)
