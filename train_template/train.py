"""
The baseline an agent edits: a small GPT trained for a fixed wall-clock budget, scored in
val_bpb by the fixed harness (prepare.py). Single device, single file, no framework.

    python train.py          (after `python prepare.py`)

Everything worth changing is a constant right below. Each is a plain literal assignment
(`DEPTH = 8`) so a variant can be made by rewriting one line.

Two profiles, one set of constants. The constants describe the gpu-profile model (~50M
parameters, batch 2**19 tokens, like karpathy/autoresearch). The cpu profile (no GPU: tests and
demos) trains the same recipe shrunk by the CPU_* factors below, applied to the constants, so
an edit to DEPTH, ASPECT_RATIO, HEAD_DIM or TOTAL_BATCH_SIZE changes the cpu run as well
(the baseline: gpu 8 layers of width 512 = 4 heads of 128; cpu 2 layers of width 64 = 4 heads of 16):
    cpu depth      = ceil(DEPTH / CPU_DEPTH_DIVISOR)
    cpu model_dim  = gpu model_dim / CPU_WIDTH_DIVISOR   (HEAD_DIM / CPU_WIDTH_DIVISOR per head)
    cpu batch      = TOTAL_BATCH_SIZE / CPU_BATCH_DIVISOR tokens per step, in one pass
                     (DEVICE_BATCH_SIZE is a GPU memory knob: it changes how a step is split, not the math)
Learning rates, betas, decay, schedule and window pattern apply unchanged on both.

Output: progress lines, then the summary block after `---`, then one `RESULT_JSON: {...}` line.
On cpu, mfu_percent is null and peak_vram_mb is the process's peak resident memory (RSS).
A NaN or exploding loss prints `FAIL: ...` and exits 1.
"""

import time

T_SCRIPT_START = time.time()  # total_seconds counts from here: imports and setup included

# ---------------------------------------------------------------------------
# Model
DEPTH = 8                 # transformer blocks
ASPECT_RATIO = 64         # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128            # channels per attention head
MLP_RATIO = 4             # hidden width of the relu^2 MLP, in multiples of model_dim
WINDOW_PATTERN = "L"      # per layer, cycled: L = full causal context, S = half the context
                          # (S uses an SDPA mask: no flash kernel, so it is slower, not faster, on GPU)
LOGIT_SOFTCAP = 15.0      # logits = cap * tanh(logits / cap)
VE_GATE_CHANNELS = 32     # input channels of the value-embedding gate

# Optimization
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step (gradient accumulation fills it)
DEVICE_BATCH_SIZE = 128   # rows per forward/backward pass
MATRIX_LR = 0.04          # Muon, for the 2D matrices inside the blocks
MUON_MOMENTUM = 0.95
EMBEDDING_LR = 0.6        # AdamW, token and value embeddings
UNEMBEDDING_LR = 0.004    # AdamW, the output head
SCALAR_LR = 0.5           # AdamW, per-layer residual / x0 mixing scalars
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.2        # decoupled, Muon matrices only, follows the LR schedule
WARMUP_RATIO = 0.0        # fraction of the budget spent ramping the LR up
WARMDOWN_RATIO = 0.5      # fraction of the budget spent ramping the LR down to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0

# cpu profile shrink (see the header)
CPU_DEPTH_DIVISOR = 4
CPU_WIDTH_DIVISOR = 8
CPU_BATCH_DIVISOR = 512

# ---------------------------------------------------------------------------

import json
import math
import resource
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import (MAX_SEQ_LEN, PROFILE, SEED, THREADS, TIME_BUDGET, Tokenizer,
                     evaluate_bpb, gpu_peak_flops, make_dataloader)

DEVICE = "cuda" if torch.cuda.is_available() and PROFILE == "gpu" else "cpu"
TIMER_SKIP_STEPS = 10 if DEVICE == "cuda" else 2  # first steps (compile, allocator) are not timed


@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    head_dim: int
    model_dim: int
    window_pattern: str


def model_config(vocab_size):
    """The model the constants describe, on this profile."""
    depth, head_dim = DEPTH, HEAD_DIM
    model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    if PROFILE == "cpu":
        depth = -(-DEPTH // CPU_DEPTH_DIVISOR)
        head_dim = max(2, HEAD_DIM // CPU_WIDTH_DIVISOR // 2 * 2)  # even, for the rotary halves
        model_dim = max(head_dim, model_dim // CPU_WIDTH_DIVISOR // head_dim * head_dim)
    return GPTConfig(vocab_size=vocab_size, seq_len=MAX_SEQ_LEN, n_layer=depth, n_head=model_dim // head_dim,
                     head_dim=head_dim, model_dim=model_dim, window_pattern=WINDOW_PATTERN)


# ---------------------------------------------------------------------------
# The model: RoPE, QK-norm, parameter-free RMSNorm, relu^2 MLP, value embeddings mixed into
# the attention values of alternating layers, learned residual / x0 mixing, untied soft-capped head.

def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def has_value_embedding(layer, n_layer):
    return layer % 2 == (n_layer - 1) % 2  # alternating, always including the last layer


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        inner = cfg.n_head * cfg.head_dim
        self.c_q = nn.Linear(cfg.model_dim, inner, bias=False)
        self.c_k = nn.Linear(cfg.model_dim, inner, bias=False)
        self.c_v = nn.Linear(cfg.model_dim, inner, bias=False)
        self.c_proj = nn.Linear(inner, cfg.model_dim, bias=False)
        gated = has_value_embedding(layer, cfg.n_layer)
        self.ve_gate = nn.Linear(min(VE_GATE_CHANNELS, cfg.model_dim), cfg.n_head, bias=False) if gated else None

    def forward(self, x, ve, cos, sin, mask):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:  # per-head gate in (0, 2); its weights start at zero, so the gate starts at 1
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate.in_features]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim).to(v.dtype)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # under bf16 autocast q, k, v are bf16: keep them so
        q, k = norm(apply_rope(q, cos, sin)), norm(apply_rope(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.model_dim, MLP_RATIO * cfg.model_dim, bias=False)
        self.c_proj = nn.Linear(MLP_RATIO * cfg.model_dim, cfg.model_dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x, ve, cos, sin, mask):
        x = x + self.attn(norm(x), ve, cos, sin, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        kv_dim = cfg.n_head * cfg.head_dim
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(cfg.vocab_size, kv_dim)
                                           for i in range(cfg.n_layer) if has_value_embedding(i, cfg.n_layer)})
        self.ve_keys = [str(i) if has_value_embedding(i, cfg.n_layer) else None for i in range(cfg.n_layer)]
        self.lm_head = nn.Linear(cfg.model_dim, cfg.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(cfg.n_layer))
        # rotary embeddings, and one mask per distinct window (None = plain causal)
        freqs = 1.0 / (10000 ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        angles = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), freqs)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)
        self.windows = [cfg.seq_len if cfg.window_pattern[i % len(cfg.window_pattern)] == "L" else cfg.seq_len // 2
                        for i in range(cfg.n_layer)]
        self.windows[-1] = cfg.seq_len  # the last layer always sees the full context
        pos = torch.arange(cfg.seq_len)
        dist = pos[:, None] - pos[None, :]
        for w in set(self.windows) - {cfg.seq_len}:
            self.register_buffer(f"mask{w}", (dist >= 0) & (dist < w), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.cfg.model_dim**-0.5  # uniform(-s, s) has std 1/sqrt(model_dim)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[self.ve_keys[i]](idx) if self.ve_keys[i] else None
            w = self.windows[i]
            mask = None if w >= T else getattr(self, f"mask{w}")[:T, :T]
            x = block(x, ve, cos, sin, mask)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

    def flops_per_token(self):
        """Training FLOPs per token: 6 per weight of every matmul (head included, embedding lookups
        not), plus attention's 12 * n_head * head_dim * window per layer (the PaLM convention)."""
        matmul = sum(p.numel() for n, p in self.named_parameters()
                     if p.dim() == 2 and "embed" not in n and n != "wte.weight")
        attn = sum(12 * self.cfg.n_head * self.cfg.head_dim * w for w in self.windows)
        return 6 * matmul + attn


# ---------------------------------------------------------------------------
# Optimizers. Muon: momentum SGD whose update is orthogonalised by a Newton-Schulz iteration
# (every singular value pushed towards 1), for the 2D matrices of the blocks; same-shape
# matrices are processed as one batch. AdamW for everything else.

def orthogonalize(G, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients tuned for fast convergence
    X = G.bfloat16() if G.is_cuda else G.float()
    wide = X.size(-2) > X.size(-1)
    if wide:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if wide else X).to(G.dtype)


class Muon:
    def __init__(self, params, lr, momentum, weight_decay):
        self.momentum, self.weight_decay = momentum, weight_decay
        by_shape = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        self.param_groups = [dict(params=ps, lr=lr, initial_lr=lr) for ps in by_shape.values()]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, lr = group["params"], group["lr"]
            grads = torch.stack([p.grad for p in params])
            if "buf" not in group:
                group["buf"] = torch.zeros_like(grads)
            group["buf"].lerp_(grads, 1 - self.momentum)
            update = orthogonalize(grads.lerp_(group["buf"], self.momentum))  # Nesterov momentum
            update *= max(1.0, params[0].size(0) / params[0].size(1)) ** 0.5
            torch._foreach_mul_(params, 1 - lr * self.weight_decay)
            torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr)


class AdamW:
    """Adam with bias correction, per-group LRs, no weight decay. (Our own, not torch.optim:
    creating a torch.optim optimizer imports torch._dynamo, seconds of startup on a CPU.)"""

    def __init__(self, groups, betas, eps=1e-10):
        self.betas, self.eps, self.t = betas, eps, 0
        self.param_groups = [dict(g, initial_lr=g["lr"]) for g in groups]

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for group in self.param_groups:
            params = group["params"]
            grads = [p.grad for p in params]
            if "m" not in group:
                group["m"] = [torch.zeros_like(p) for p in params]
                group["v"] = [torch.zeros_like(p) for p in params]
            m, v = group["m"], group["v"]
            torch._foreach_lerp_(m, grads, 1 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, (1 - b2**self.t) ** 0.5)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, m, denom, value=-group["lr"] / (1 - b1**self.t))


def make_optimizers(model):
    scale = (model.cfg.model_dim / 768) ** -0.5  # AdamW LRs were tuned at width 768
    adam = AdamW([
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * scale),
        dict(params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR),
    ], betas=ADAM_BETAS)
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    return [adam, muon]


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    frac = (1 - progress) / WARMDOWN_RATIO
    return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * max(0.0, frac)


def build_model(vocab_size, device):
    torch.manual_seed(SEED)
    with torch.device(device):
        model = GPT(model_config(vocab_size))
    model.init_weights()
    return model


# ---------------------------------------------------------------------------
# Training

if __name__ == "__main__":
    if PROFILE == "gpu" and DEVICE != "cuda":
        sys.exit("the gpu profile needs a CUDA GPU; on this machine use AUTORESEARCH_PROFILE=cpu")
    if THREADS:
        torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    if DEVICE == "cuda":
        torch.cuda.manual_seed(SEED)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if DEVICE == "cuda"
                else torch.autocast("cpu", enabled=False))
    device_name = f"cuda:{torch.cuda.get_device_name()}" if DEVICE == "cuda" else "cpu"
    peak_flops = gpu_peak_flops(device_name) if DEVICE == "cuda" else None

    tokenizer = Tokenizer.load()
    model = build_model(tokenizer.vocab_size, DEVICE)
    cfg = model.cfg
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.flops_per_token()
    optimizers = make_optimizers(model)
    train_model = torch.compile(model, dynamic=False) if DEVICE == "cuda" else model

    total_batch = TOTAL_BATCH_SIZE // (CPU_BATCH_DIVISOR if PROFILE == "cpu" else 1)
    rows = DEVICE_BATCH_SIZE if DEVICE == "cuda" else total_batch // MAX_SEQ_LEN  # cpu: one pass per step
    assert rows > 0 and total_batch % (rows * MAX_SEQ_LEN) == 0, \
        f"a step of {total_batch} tokens is not a whole number of passes of {rows} rows x {MAX_SEQ_LEN}"
    grad_accum = total_batch // (rows * MAX_SEQ_LEN)
    loader = make_dataloader(rows, "train", DEVICE)
    x, y, epoch = next(loader)

    threads = f" ({torch.get_num_threads()} threads)" if DEVICE == "cpu" else ""
    print(f"profile {PROFILE} | device {device_name}{threads} | budget {TIME_BUDGET:.0f}s | seed {SEED}")
    print(f"model: {cfg.n_layer} layers, dim {cfg.model_dim}, {cfg.n_head} heads of {cfg.head_dim}, "
          f"vocab {cfg.vocab_size}, seq {cfg.seq_len} | {num_params / 1e6:.2f}M params")
    print(f"batch: {total_batch:,} tokens/step = {grad_accum} x {rows} rows of {MAX_SEQ_LEN}")
    print(f"setup: {time.time() - T_SCRIPT_START:.1f}s", flush=True)

    step, training_time, timed_tokens, smooth_loss = 0, 0.0, 0, 0.0
    explode_loss = 3 * math.log(cfg.vocab_size)  # a model that stays worse than 3x uniform has diverged
    t_loop = time.time()
    while True:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(grad_accum):
            with autocast:
                loss = train_model(x, y)
            (loss / grad_accum).backward()
            x, y, epoch = next(loader)
        progress = training_time / TIME_BUDGET
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier(progress)
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_f = loss.item()  # waits for the step to finish
        dt = time.time() - t0
        if not math.isfinite(loss_f) or loss_f > explode_loss:
            print(f"FAIL: nan/exploded training loss {loss_f:.4g} at step {step} "
                  f"(must be finite and below {explode_loss:.1f})")
            sys.exit(1)
        if step >= TIMER_SKIP_STEPS:
            training_time += dt
            timed_tokens += total_batch
        step += 1
        if step == TIMER_SKIP_STEPS:
            print(f"warm-up: {step} untimed steps in {time.time() - t_loop:.1f}s (compilation included)", flush=True)
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
        if step % 25 == 0 or step <= 3:
            tok_s = total_batch / dt
            mfu = f" | mfu {100 * flops_per_token * tok_s / peak_flops:.1f}%" if peak_flops else ""
            print(f"step {step:05d} | loss {smooth_loss / (1 - 0.9**step):.4f} | lr x{lr_multiplier(progress):.2f} | "
                  f"{dt * 1000:.0f}ms | {tok_s:,.0f} tok/s{mfu} | epoch {epoch} | "
                  f"{training_time:.1f}/{TIME_BUDGET:.0f}s", flush=True)
        if step > TIMER_SKIP_STEPS and training_time >= TIME_BUDGET:
            break

    tokens_per_s = timed_tokens / max(training_time, 1e-9)
    print(f"trained {step} steps ({step - TIMER_SKIP_STEPS} timed): {tokens_per_s:,.0f} tok/s", flush=True)
    t_eval = time.time()
    with autocast:
        val_bpb = evaluate_bpb(model, min(rows, 64) if DEVICE == "cuda" else 8)  # eager: no recompile for eval
    print(f"eval: {time.time() - t_eval:.1f}s", flush=True)
    if not math.isfinite(val_bpb):
        print(f"FAIL: nan val_bpb ({val_bpb})")
        sys.exit(1)

    if DEVICE == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # peak resident memory of this process (Linux reports KiB)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "val_bpb": round(val_bpb, 6),
        "training_seconds": round(training_time, 1),
        "total_seconds": round(time.time() - T_SCRIPT_START, 1),
        "peak_vram_mb": round(peak_mb, 1),
        "mfu_percent": round(100 * flops_per_token * tokens_per_s / peak_flops, 2) if peak_flops else None,
        "total_tokens_M": round(step * total_batch / 1e6, 3),
        "num_steps": step,
        "num_params_M": round(num_params / 1e6, 2),
        "depth": cfg.n_layer,
        "device": device_name,
    }
    print("---")
    for key, value in result.items():
        shown = "n/a" if value is None else (f"{value:.6f}" if key == "val_bpb" else value)
        print(f"{key + ':':<18}{shown}")
    print("RESULT_JSON: " + json.dumps(result), flush=True)
