"""Models, data and plain-PyTorch twins for `benchmarks/perf_check.py` (random weights, built from config, offline).

The plain twins are the same maths as a method's step written in a few lines of plain fp32 PyTorch (eager, no
autocast, no compile, plain `torch.optim.AdamW`): the yardstick each toolkit step is divided by. A method with no
twin here (e.g. a newly registered one) is still benchmarked through its trainer; add its twin to `PLAIN_STEPS`.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from vlmrobust.trainers import fare_distance

#: dense bf16 tensor-core peak (TFLOP/s, no sparsity) of the cards MFU is reported against
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def card_peak(name: str) -> tuple[str | None, float | None]:
    """(`"H100 dense bf16"`, 989.0) for a CUDA device name; (None, None) when the card is not in the table."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return f"{key} dense bf16", PEAK_BF16_TFLOPS[key]
    return None, None


class SyntheticImages(torch.utils.data.Dataset):
    """`n` items cycling over a few random [0, 1] images (labels and class names for supervised methods)."""

    def __init__(self, n: int, size: int, distinct: int = 64, num_classes: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(min(distinct, n), 3, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (len(self.images),), generator=g)
        self.n = n
        self.classnames = [f"class {i}" for i in range(num_classes)]
        self.templates = ["a photo of a {}."]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        j = i % len(self.images)
        return {"pixel_values": self.images[j], "labels": int(self.labels[j])}


# -- models -----------------------------------------------------------------------------------------------------
def clip_model(arch: str, device: torch.device):
    """open_clip `arch` with random weights ("tiny": vlmrobust's tiny test CLIP, 32 px)."""
    from vlmrobust.models import create_model

    if arch == "tiny":
        import tempfile

        from vlmrobust.testing import build_tiny_open_clip

        path = build_tiny_open_clip(tempfile.mkdtemp(), image_size=32, patch_size=4, width=64)
        return create_model(f"local-dir:{path}", device=device)
    return create_model(f"open_clip:{arch}", device=device)


def llava_tower(smoke: bool, device: torch.device, dtype: torch.dtype):
    """LLaVA-1.5-7B's vision tower (CLIP ViT-L/14 at 336 px, from its config) inside a vlmrobust `Llava` whose
    language model is tiny (a FARE step never runs it); `smoke`: the tiny test LLaVA."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vlmrobust.models.llava_backend import Llava
    from vlmrobust.testing.tiny_llava import make_tiny_llava

    size, patch = (32, 8) if smoke else (336, 14)
    model, processor = make_tiny_llava(image_size=size, patch_size=patch)
    if not smoke:
        vcfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                hidden_act="quick_gelu", layer_norm_eps=1e-5)
        with torch.device(device):
            model.model.vision_tower = CLIPVisionModel(vcfg)
        model.config.vision_config = vcfg
    model = model.to(device=device, dtype=dtype)
    return Llava(model, processor, "LLaVA-1.5-7B vision tower (random weights from config)")


def qwen_tower(smoke: bool, device: torch.device, dtype: torch.dtype):
    """Qwen2.5-VL-3B's vision tower (from its config, 448 px) inside a vlmrobust `QwenVL` with a tiny language
    model; `smoke`: the tiny test Qwen2.5-VL."""
    from vlmrobust.models.qwen_vl_backend import QwenVL
    from vlmrobust.testing.tiny_qwen import make_tiny_qwen2_5_vl

    size = 56 if smoke else 448
    model, processor = make_tiny_qwen2_5_vl(image_size=size)
    if not smoke:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
            Qwen2_5_VLVisionConfig,
        )

        vcfg = Qwen2_5_VLVisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                      out_hidden_size=2048, patch_size=14, spatial_merge_size=2,
                                      temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                                      hidden_act="silu", in_channels=3)
        vcfg._attn_implementation = "sdpa"
        with torch.device(device):
            model.model.visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(vcfg)
        model.config.vision_config = vcfg
    model = model.to(device=device, dtype=dtype)
    return QwenVL(model, processor, "Qwen2.5-VL-3B vision tower (random weights from config)", default_size=size)


# -- FLOPs and memory -------------------------------------------------------------------------------------------
def count_flops(fn) -> int:
    """FLOPs of `fn()` (forward and backward ops alike), counted by `torch.utils.flop_counter`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process-wide max RSS (KiB -> GiB)


# -- plain fp32 twins -------------------------------------------------------------------------------------------
def _pgd(forward, loss_fn, x, target, eps, alpha, steps, gen, random_start=True):
    if random_start:
        delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    else:
        delta = torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(forward(x + delta), target).sum(), delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def plain_fare(model, batch_fn, steps, warmup, device, attack_steps=10):
    """FARE in plain fp32 PyTorch: frozen copy's clean target, PGD (sign steps, random start), AdamW step."""
    enc = model.image_encoder.float().train()
    ref = copy.deepcopy(enc).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(x, _y):
        with torch.no_grad():
            target = ref(x)
        enc.eval()
        enc.requires_grad_(False)
        x_adv = _pgd(enc, fare_distance, x, target, 4 / 255, 1 / 255, attack_steps, gen)
        enc.requires_grad_(True)
        enc.train()
        loss = fare_distance(enc(x_adv), target).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)  # HF's default max_grad_norm, as the trainer does
        opt.step()

    return time_steps(step, batch_fn, steps, warmup, device)


def plain_tecoa(model, batch_fn, steps, warmup, device, attack_steps=10, classnames=None):
    """TeCoA in plain fp32 PyTorch: CE of `100 · cos(φ(x+δ), t_c)` against frozen text embeddings."""
    enc = model.image_encoder.float().train()
    with torch.no_grad():
        text = model.class_embeddings(list(classnames), ["This is a photo of a {}"]).float().to(device)
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def logits(z):
        return 100.0 * F.normalize(enc(z).float(), dim=-1) @ text.T

    def step(x, y):
        enc.eval()
        enc.requires_grad_(False)
        x_adv = _pgd(logits, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y, 4 / 255, 1 / 255,
                     attack_steps, gen)
        enc.requires_grad_(True)
        enc.train()
        loss = F.cross_entropy(logits(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()

    return time_steps(step, batch_fn, steps, warmup, device)


def digrap_plain_step(model, device, classnames, *, lr=1e-5, weight_decay=0.0, mu=0.5, omega_init=0.0,
                      learn_omega=True, betas=(0.9, 0.999), eps=1e-8, logit_scale=100.0, max_grad_norm=1.0,
                      adversarial=False, attack_steps=10, templates=("This is a photo of a {}",), record=None):
    """DiGraP's step (`DiGraPConfig` defaults: full fine-tuning of the tower, frozen zero-shot cosine head, clean CE)
    in plain fp32 PyTorch: CE of `scale · normalize(φ(x)) · Wᵀ`, backward, then per tensor the ω hypergradient step
    (`cos(g₁, c_{t−1})` through a scalar Adam, ω clipped to [0, 1]) and the one-sided projection
    `g = g₁ − ω·(g₁·g₂/‖g₂‖²)·g₂` when `g₁·g₂ < 0` (g₂ = θ − θ₀), clipping to norm 1, `torch.optim.AdamW`.

    Returns `step(x, y) -> loss`; `record` (a list): each step appends the gradients the optimizer sees and ω.
    """
    enc = model.image_encoder.float().train().requires_grad_(True)
    with torch.no_grad():
        head = F.normalize(model.class_embeddings(list(classnames), list(templates)).float(), dim=-1).to(device)
    params = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    theta0 = {n: p.detach().clone() for n, p in params}
    state = {n: {"omega": float(omega_init), "m": 0.0, "v": 0.0, "n": 0, "prev": None} for n, _ in params}
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    gen = torch.Generator(device=device).manual_seed(0)
    b1, b2 = betas

    def logits(z):
        return logit_scale * F.normalize(enc(z).float(), dim=-1) @ head.T

    def step(x, y):
        if adversarial:
            enc.eval().requires_grad_(False)
            x = _pgd(logits, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y, 4 / 255, 1 / 255,
                     attack_steps, gen)
            enc.train().requires_grad_(True)
        loss = F.cross_entropy(logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for n, p in params:
                g, s = p.grad, state[n]
                if learn_omega and s["prev"] is not None:  # hypergradient step on ω: scalar Adam on cos(g, c_{t-1})
                    den = float(g.norm()) * float(s["prev"].norm())
                    if den > 0 and den != float("inf"):
                        h = float((g * s["prev"]).sum()) / den
                        s["n"] += 1
                        s["m"] = b1 * s["m"] + (1 - b1) * h
                        s["v"] = b2 * s["v"] + (1 - b2) * h * h
                        m_hat, v_hat = s["m"] / (1 - b1 ** s["n"]), s["v"] / (1 - b2 ** s["n"])
                        s["omega"] = min(1.0, max(0.0, s["omega"] - mu * m_hat / (v_hat**0.5 + eps)))
                g2 = p - theta0[n]
                dot, sq = float((g * g2).sum()), float((g2 * g2).sum())
                if dot < 0 and sq > 0:  # conflict: descending g moves θ away from θ₀
                    c = g2 * (dot / sq)
                    s["prev"] = c if learn_omega else None
                    g.sub_(c, alpha=s["omega"])
                else:
                    s["prev"] = None
        torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
        if record is not None:
            record.append({"grads": {n: p.grad.detach().clone() for n, p in params},
                           "omega": {n: state[n]["omega"] for n, _ in params}})
        opt.step()
        return loss.detach()

    step.params = params
    return step


def plain_digrap(model, batch_fn, steps, warmup, device, classnames=None, **kw):
    """DiGraP in plain fp32 PyTorch (`digrap_plain_step`)."""
    return time_steps(digrap_plain_step(model, device, classnames, **kw), batch_fn, steps, warmup, device)


#: LoRA targets of the twins (the toolkit's defaults: open_clip's MLP and patch embedding; HF CLIP's attention + MLP)
_LORA_TARGETS = {"open_clip": ("conv1", "c_fc", "c_proj"), "hf-clip": ("q_proj", "k_proj", "v_proj", "out_proj",
                                                                      "fc1", "fc2")}


class _LoRA(torch.nn.Module):
    """`base(x) + s·B(A(x))` for a frozen `nn.Linear` / `nn.Conv2d` base (A: Kaiming-uniform, B: zeros, as PEFT), and
    for linear layers the weight perturbation: `delta` (a dense tensor or None) is added to the weight."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale, self.delta = base, alpha / r, None
        if isinstance(base, torch.nn.Conv2d):
            self.lora_A = torch.nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, base.padding, bias=False)
            self.lora_B = torch.nn.Conv2d(r, base.out_channels, 1, 1, bias=False)
        else:
            self.lora_A = torch.nn.Linear(base.in_features, r, bias=False)
            self.lora_B = torch.nn.Linear(r, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=5**0.5)
        torch.nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight), self.lora_B.to(base.weight)

    def forward(self, x):
        if self.delta is None:
            out = self.base(x)
        else:
            out = F.linear(x, self.base.weight + self.delta, self.base.bias)
        return out + self.lora_B(self.lora_A(x)) * self.scale


def add_plain_lora(tower, targets, r, alpha):
    """Wrap `tower`'s modules whose names end with one of `targets` in `_LoRA`; returns `{name: _LoRA}` in order."""
    found = {n: m for n, m in tower.named_modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and n.split(".")[-1] in targets}
    out = {}
    for name, m in found.items():
        parent = tower.get_submodule(name.rpartition(".")[0]) if "." in name else tower
        wrapped = _LoRA(m, r, alpha)
        setattr(parent, name.rpartition(".")[2], wrapped)
        out[name] = wrapped
    return out


def _ranks(curvature, max_rank, middle_rank, top, bottom):
    n = len(curvature)
    n_top = int(top * n + 0.5)
    n_bottom = min(int(bottom * n + 0.5), n - n_top)
    order = sorted(range(n), key=lambda i: (-curvature[i], i))
    ranks = [middle_rank] * n
    for i in order[:n_top]:
        ranks[i] = max_rank
    for i in order[n - n_bottom:]:
        ranks[i] = 0
    return ranks


def grace_plain_step(model, device, classnames, *, lora_r=64, lora_alpha=None, lr=2e-4, weight_decay=0.0, rho=0.05,
                     max_rank=4, middle_rank=None, top_fraction=0.2, bottom_fraction=0.2, beta=0.9, interval=1000,
                     lambda_lar=1.0, lambda_gv=1.0, gram_eps=1e-6, logit_scale=100.0, max_grad_norm=1.0,
                     attack_steps=10, random_start=True, templates=("This is a photo of a {}",), record=None,
                     lora_init=None):
    """GRACE's step (`GRACEConfig` defaults) in plain fp32 PyTorch, SAM style.

    LoRA (rank r, α = 2r) on the tower's default targets; PGD on the zero-shot CE; pass 1: CE(x_adv) at θ, whose
    backward also gives each perturbed linear layer's weight gradient G (the frozen weight's own autograd gradient);
    curvature EMA of mean(G²) and ranks (top 20 %: 4, bottom 20 %: 0, others 2) at steps 0, K, 2K, ...; Δ_l the best
    rank-r_l approximation of G_l (SVD), scaled so that ‖Δ‖_F over all layers is ρ; pass 2 at θ + Δ (the weights
    plus Δ): `λ_LAR·CE_{θ+Δ}(x_adv) + λ_GV·GramVolume(φ_θ(x), φ_θ(x_adv), φ_{θ+Δ}(x))` (normalised embeddings,
    float64 3×3 determinant, `sqrt(|det| + eps) − sqrt(eps)`); Δ removed, clipping to norm 1, `torch.optim.AdamW`.

    `lora_init` (a callable on `{name: _LoRA}`) sets the adapters' initial values (tests copy the toolkit's).
    Returns `step(x, y) -> loss`; `record` (a list): each step appends the gradients the optimizer sees.
    """
    enc = model.image_encoder.float().requires_grad_(False)
    backend = getattr(model, "backend", "open_clip")
    with torch.no_grad():
        text = model.class_embeddings(list(classnames), list(templates)).float().to(device)
    tower = getattr(enc, "tower", enc)
    layers = add_plain_lora(tower, _LORA_TARGETS[backend], lora_r, lora_alpha if lora_alpha is not None else 2 * lora_r)
    enc.to(device)
    if lora_init is not None:
        lora_init(layers)
    perturbed = {n: m for n, m in layers.items() if isinstance(m.base, torch.nn.Linear)}
    params = [(n, p) for n, p in enc.named_parameters() if ".lora_" in n]
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)
    mid = middle_rank if middle_rank is not None else (max(1, max_rank // 2) if max_rank > 0 else 0)
    curv, ranks, t = {}, {}, [0]

    def logits_of(e):
        return logit_scale * F.normalize(e.float(), dim=-1) @ text.T

    def gram_volume(a, b, c):
        v = torch.stack([F.normalize(e.double(), dim=-1) for e in (a, b, c)], dim=1)
        g = v @ v.transpose(1, 2)
        det = (g[:, 0, 0] * (g[:, 1, 1] * g[:, 2, 2] - g[:, 1, 2] * g[:, 2, 1])
               - g[:, 0, 1] * (g[:, 1, 0] * g[:, 2, 2] - g[:, 1, 2] * g[:, 2, 0])
               + g[:, 0, 2] * (g[:, 1, 0] * g[:, 2, 1] - g[:, 1, 1] * g[:, 2, 0]))
        return ((det.abs() + gram_eps).sqrt() - gram_eps**0.5).mean().float()

    def step(x, y):
        enc.eval()
        x_adv = _pgd(lambda z: logits_of(enc(z)), lambda o, t_: F.cross_entropy(o, t_, reduction="none"), x, y,
                     4 / 255, 1 / 255, attack_steps, gen, random_start)
        enc.train()
        for _, p in params:
            p.requires_grad_(True)
        for m in perturbed.values():  # pass 1 also yields ∂CE/∂W of each perturbed layer
            m.base.weight.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        ce = F.cross_entropy(logits_of(enc(x_adv)), y)
        ce.backward()
        grads = {}
        for n, m in perturbed.items():
            grads[n], m.base.weight.grad = m.base.weight.grad, None
            m.base.weight.requires_grad_(False)
        with torch.no_grad():
            for n, g in grads.items():
                h = float(g.pow(2).mean())
                curv[n] = h if n not in curv else beta * curv[n] + (1 - beta) * h
            if t[0] % interval == 0 or not ranks:
                ranks.update(zip(grads, _ranks([curv[n] for n in grads], max_rank, mid, top_fraction,
                                                bottom_fraction)))
            deltas = {}
            for n, g in grads.items():
                if ranks[n] > 0 and rho > 0:
                    u, sv, vh = torch.linalg.svd(g, full_matrices=False)
                    r = ranks[n]
                    deltas[n] = (u[:, :r] * sv[:r]) @ vh[:r]
            total = sum(float(d.pow(2).sum()) for d in deltas.values()) ** 0.5
            deltas = {n: d * (rho / total) for n, d in deltas.items()} if total > 0 else {}
        loss = torch.zeros((), device=x.device)
        e_clean, e_adv = enc(torch.cat([x, x_adv])).chunk(2)
        for n, d in deltas.items():  # θ + Δ for the perturbed forward only
            perturbed[n].delta = d
        try:
            e_p_adv, e_wp = enc(torch.cat([x_adv, x])).chunk(2)
        finally:
            for m in perturbed.values():
                m.delta = None
        if lambda_lar > 0:
            loss = loss + lambda_lar * F.cross_entropy(logits_of(e_p_adv), y)
        if lambda_gv > 0:
            loss = loss + lambda_gv * gram_volume(e_clean, e_adv, e_wp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
        if record is not None:
            record.append({"grads": {n: p.grad.detach().clone() for n, p in params}, "ranks": dict(ranks)})
        opt.step()
        for _, p in params:
            p.requires_grad_(False)
        t[0] += 1
        return (ce + loss).detach()

    step.params, step.layers = params, layers
    return step


def plain_grace(model, batch_fn, steps, warmup, device, classnames=None, **kw):
    """GRACE in plain fp32 PyTorch (`grace_plain_step`)."""
    return time_steps(grace_plain_step(model, device, classnames, **kw), batch_fn, steps, warmup, device)


PLAIN_STEPS = {"fare": plain_fare, "tecoa": plain_tecoa, "digrap": plain_digrap, "grace": plain_grace}


def time_steps(step, batch_fn, steps, warmup, device) -> dict:
    """Median seconds per step of `step(x, y)` over `steps` timed calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + steps):
        x, y = batch_fn()
        sync(device)
        if i == warmup:
            reset_peak(device)
        t = time.perf_counter()
        step(x, y)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"step_s": times[len(times) // 2], "step_times_s": [round(t, 5) for t in times],
            "peak_mem_gib": round(peak_memory_gib(device), 3)}
