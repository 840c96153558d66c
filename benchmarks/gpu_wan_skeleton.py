"""Time SenCache on a full-size, random-weight Wan 2.1 1.3B transformer skeleton (GPU only).

The skeleton has the config of Wan2.1-T2V-1.3B (30 layers, 12 heads x 128, FFN 8960, text
dim 4096, 16 latent channels, patch (1, 2, 2)) with random weights in bf16, at a 480p-like
latent of 21 x 60 x 104 (81 frames of 480 x 832): what the block-stack skipping saves on real
sizes, where the per-step overheads (embeddings, head, the rule's norms) are small next to the
30 blocks. A flow-matching Euler loop drives the bare transformer; SenCache is applied to it with
a flat-ε policy whose ε is bisected until the run computes about 70%, 50% and 40% of the steps
(the measured fraction is printed, not assumed). CI never runs this.

    python benchmarks/gpu_wan_skeleton.py                 # 30 steps, 1 sample
    python benchmarks/gpu_wan_skeleton.py --steps 20 --frames 21 --height 60 --width 104
    python benchmarks/gpu_wan_skeleton.py --smoke         # a tiny config on CPU: checks the script
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
SMOKE = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=4)


def build(config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**config)
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # its "keep these in float32" warning: done just below
    model = model.to(dtype)
    dlogging.set_verbosity(level)
    # what from_pretrained(torch_dtype=bf16) does: the class's precision-sensitive modules stay float32
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    return model.eval()


class Loop:
    """An Euler flow-matching loop over `steps` with fixed inputs, timing each full run."""

    def __init__(self, model, steps: int, shape: tuple[int, ...], text_len: int, text_dim: int, device, dtype) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.model, self.steps, self.device = model, steps, device
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
        self.scheduler.set_timesteps(steps, device=device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.x0 = torch.randn(shape, generator=gen).to(device, dtype)
        self.text = (torch.randn((shape[0], text_len, text_dim), generator=gen) * 0.5).to(device, dtype)

    @torch.no_grad()
    def run(self) -> float:
        self.scheduler.set_timesteps(self.steps, device=self.device)
        x = self.x0.clone()
        sync(self.device)
        start = time.perf_counter()
        for t in self.scheduler.timesteps:
            v = self.model(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=self.text, return_dict=False)[0]
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
        sync(self.device)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def apply_flat(model, loop: Loop, eps: float):
    import sencache
    from policies import SensitivityTable, config_fingerprint, constant_policy

    # score = RMS latent change since the reference step (J_x = 1, J_t = 0); K = 3 as the paper
    policy = constant_policy(eps, model_class=type(model).__name__, fingerprint=config_fingerprint(dict(model.config)),
                             sensitivity=SensitivityTable.constant(1.0, 0.0), max_skips=3)
    handle = sencache.apply(model, policy)
    handle.set_timesteps(loop.scheduler.timesteps)
    return handle


def nfe_at(model, loop: Loop, eps: float) -> tuple[float, float]:
    import sencache

    handle = apply_flat(model, loop, eps)
    try:
        seconds = loop.run()
        return float(handle.report().nfe_fraction.mean()), seconds
    finally:
        sencache.remove(model)


def find_eps(model, loop: Loop, target: float, iterations: int = 10) -> tuple[float, float, float]:
    """Bisect log ε until the measured NFE fraction is as close to `target` as the steps allow."""
    lo, hi = 1e-6, 1e3
    best = (float("inf"), 1.0, 0.0, 0.0)
    for _ in range(iterations):
        mid = (lo * hi) ** 0.5
        nfe, seconds = nfe_at(model, loop, mid)
        best = min(best, (abs(nfe - target), mid, nfe, seconds))
        if nfe > target:
            lo = mid
        else:
            hi = mid
    return best[1], best[2], best[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=21, help="latent frames (81 video frames -> 21)")
    parser.add_argument("--height", type=int, default=60, help="latent height (480 px -> 60)")
    parser.add_argument("--width", type=int, default=104, help="latent width (832 px -> 104)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--targets", default="0.7,0.5,0.4")
    parser.add_argument("--smoke", action="store_true", help="tiny config on CPU, to check the script")
    args = parser.parse_args(argv)

    if args.smoke:
        device, dtype, config = torch.device("cpu"), torch.float32, SMOKE
        args.frames, args.height, args.width, args.steps, args.repeats = 3, 8, 8, 10, 1
    else:
        if not torch.cuda.is_available():
            print("gpu_wan_skeleton: no CUDA GPU here. This benchmark times a 1.3B-parameter transformer at 480p "
                  "and needs a GPU (about 10 GB of memory); run it on a machine with one, or pass --smoke to check "
                  "the script on a tiny config on CPU.", file=sys.stderr)
            return 2
        device, dtype, config = torch.device("cuda"), torch.bfloat16, WAN_1_3B

    model = build(config, device, dtype)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    shape = (args.batch, config["in_channels"], args.frames, args.height, args.width)
    loop = Loop(model, args.steps, shape, 512 if not args.smoke else 16, config["text_dim"], device, dtype)
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"Wan 2.1 1.3B skeleton: {params:.2f}B parameters, {dtype}, latent {tuple(shape)} = {tokens} tokens, "
          f"{args.steps} steps on {name}")

    loop.run()  # warm-up (kernels, allocator)
    full = sorted(loop.run() for _ in range(args.repeats))[args.repeats // 2]
    print(f"{'setting':<22}{'NFE (measured)':>16}{'seconds':>10}{'speedup':>9}{'ideal 1/NFE':>13}")
    print(f"{'full compute':<22}{1.0:>16.3f}{full:>10.2f}{1.0:>9.2f}{1.0:>13.2f}")
    import sencache

    for target in (float(v) for v in args.targets.split(",")):
        eps, nfe, _ = find_eps(model, loop, target)
        apply_flat(model, loop, eps)
        try:
            loop.run()
            seconds = sorted(loop.run() for _ in range(args.repeats))[args.repeats // 2]
        finally:
            sencache.remove(model)
        print(f"{f'sencache ~{target:g} (ε={eps:.3g})':<22}{nfe:>16.3f}{seconds:>10.2f}{full / seconds:>9.2f}{1 / nfe:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
