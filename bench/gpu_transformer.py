"""GPU: seconds per denoising step of the full-size FLUX Fill transformer under each speed switch.

The real architecture (19 double + 38 single blocks, 24 heads x 128, in 384 / out 64 channels, T5 width 4096,
pooled 768, rope axes (16, 56, 56), guidance embedding) with random weights: speed does not depend on the
weights. At 1024² a step sees 4096 image + 512 text tokens. Each variant builds a fresh model, applies its
switches with the service's own code (`fluxfill.inpaint.speedups`), warms up, then runs a small Euler loop
(latents move every step, as in denoising) and reports the median and mean seconds per step, the warm-up
(compilation) time and the peak GPU memory (weights included).

Variants change one thing at a time against bf16, plus the combinations that matter:
- fp8: torchao float8 dynamic quantization of the linears (needs torchao and compute capability 8.9+);
- gguf-q4: every linear holds Q4_0 blocks that diffusers' GGUFLinear dequantizes on each forward;
- offload leaf: weights stream from CPU per layer on every step (like enable_sequential_cpu_offload);
  offload block: diffusers group offloading, one block per group on a CUDA stream (overlaps transfers);
- fbcache: first-block cache (threshold 0.1); with random weights the hit rate is not the real model's,
  so read its median as the cost of a cached step and its mean as the mix this run happened to see;
- compile: regional torch.compile (each repeated block), inductor on CUDA.
A variant whose library or hardware is missing is reported "unavailable (reason)"; a variant that fails is
reported with its error and the script exits 1 after printing the table.

On a GPU (CUDA torch; `pip install torchao` for fp8; 24 GB weights in bf16, so an 80 GB card runs every
variant, an L4 the fp8 / gguf / offload ones):
    python -m bench.gpu_transformer                      # all variants at 1024², 8 timed steps each
    python -m bench.gpu_transformer --variants bf16,fp8+compile --steps 28
On a CPU machine it runs a scaled-down config (2+4 blocks, width 128, 256+32 tokens; --quick: 1+2 blocks,
64+16 tokens) so CI proves every code path it can; CUDA-only variants are reported unavailable.
"""

import gc
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel

from bench.common import markdown_table, parser, pyplot, report, save_plot
from fluxfill.inpaint.speedups import (
    FP8_MIN_CAPABILITY,
    compile_transformer,
    enable_first_block_cache,
    quantize_fp8,
    reset_step_cache,
)

FULL_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 384,
    "out_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
SMALL = {"num_layers": 2, "num_single_layers": 4, "attention_head_dim": 32, "num_attention_heads": 4}
SMALL_TEXT = {"joint_attention_dim": 256, "pooled_projection_dim": 64, "axes_dims_rope": (8, 12, 12)}
QUICK = {**SMALL, "num_layers": 1, "num_single_layers": 2}
FBCACHE_THRESHOLD = 0.1
WARMUP_STEPS = 2


@dataclass(frozen=True)
class Shape:
    """A transformer configuration and the tokens of one step."""

    config: dict[str, Any]
    image_tokens: int
    text_tokens: int


@dataclass(frozen=True)
class Variant:
    """One combination of switches."""

    precision: str = "bf16"  # bf16, fp8, gguf-q4
    offload: str = "none"  # none, leaf, block
    fbcache: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        parts = [self.precision]
        if self.offload != "none":
            parts.append(f"offload {self.offload}")
        parts += [switch for switch, on in (("fbcache", self.fbcache), ("compile", self.compile)) if on]
        return "+".join(parts)


VARIANTS = (
    Variant(),
    Variant(compile=True),
    Variant(fbcache=True),
    Variant(precision="fp8"),
    Variant(precision="fp8", compile=True),
    Variant(precision="fp8", compile=True, fbcache=True),
    Variant(precision="gguf-q4"),
    Variant(offload="leaf"),
    Variant(offload="block"),
    Variant(precision="gguf-q4", offload="leaf"),
)


def unavailable(variant: Variant, device: torch.device) -> str | None:
    """Why a variant cannot run here, or None."""
    cuda = device.type == "cuda"
    if variant.offload != "none" and not cuda:
        return "CPU offload needs a CUDA device"
    if variant.precision == "fp8":
        try:
            import torchao  # noqa: F401
        except ImportError:
            return "torchao is not installed"
        if not cuda or torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
            return "fp8 needs a CUDA GPU of compute capability 8.9+"
    return None


def build(shape: Shape, dtype: torch.dtype, device: torch.device) -> Any:
    """A randomly initialised transformer, created directly on the device in the compute dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model: Any = FluxTransformer2DModel(**shape.config)  # type: ignore[no-untyped-call]
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def to_gguf_q4(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Swap every linear (input a multiple of 32) for a GGUFLinear holding random but valid Q4_0 blocks."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_0]
    scale = torch.tensor([0.002], dtype=torch.float16).view(torch.uint8)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or child.in_features % block:
                continue
            device = child.weight.device
            rows, blocks = child.out_features, child.in_features // block
            data = torch.randint(0, 256, (rows, blocks, block_bytes), dtype=torch.uint8, device=device)
            # Each block starts with its fp16 scale: a fixed, finite one keeps the outputs finite.
            data[:, :, :2] = scale.to(device)
            layer = GGUFLinear(child.in_features, child.out_features, child.bias is not None, dtype, "meta")
            layer.weight = GGUFParameter(  # type: ignore[no-untyped-call]
                data.view(rows, blocks * block_bytes), quant_type=gguf.GGMLQuantizationType.Q4_0
            )
            layer.bias = child.bias
            setattr(parent, name, layer)


def prepare(shape: Shape, variant: Variant, dtype: torch.dtype, device: torch.device, backend: str) -> Any:
    """Build the model and apply the variant's switches in the order the service applies them."""
    model = build(shape, dtype, device)
    if variant.precision == "fp8":
        quantize_fp8(model)
    elif variant.precision == "gguf-q4":
        to_gguf_q4(model, dtype)
    if variant.offload != "none":
        model.to("cpu")
        torch.cuda.empty_cache()
        if variant.offload == "leaf":
            model.enable_group_offload(device, offload_type="leaf_level")
        else:
            model.enable_group_offload(
                device, offload_type="block_level", num_blocks_per_group=1, use_stream=True
            )
    if variant.fbcache:
        enable_first_block_cache(model, FBCACHE_THRESHOLD)
    if variant.compile:
        compile_transformer(model, "regional", backend)
    return model


def step_inputs(shape: Shape, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Random conditioning of one request: text embeddings, the packed mask/image latents, position ids."""
    config = shape.config
    generator = torch.Generator(device="cpu").manual_seed(0)

    def noise(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device, dtype)

    side = int(shape.image_tokens**0.5)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return {
        "latents": noise(1, shape.image_tokens, config["out_channels"]),
        "condition": noise(1, shape.image_tokens, config["in_channels"] - config["out_channels"]),
        "encoder_hidden_states": noise(1, shape.text_tokens, config["joint_attention_dim"]),
        "pooled_projections": noise(1, config["pooled_projection_dim"]),
        "img_ids": torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(device, dtype),
        "txt_ids": torch.zeros(shape.text_tokens, 3, device=device, dtype=dtype),
        "guidance": torch.tensor([30.0], device=device, dtype=dtype),
    }


def euler_run(model: Any, inputs: dict[str, torch.Tensor], steps: int, device: torch.device) -> list[float]:
    """Seconds of each step of a flow-matching Euler loop over the latents."""
    reset_step_cache(model)
    latents = inputs["latents"]
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    seconds = []
    with torch.inference_mode():
        for index in range(steps):
            started = time.perf_counter()
            velocity = model(
                hidden_states=torch.cat([latents, inputs["condition"]], dim=-1),
                encoder_hidden_states=inputs["encoder_hidden_states"],
                pooled_projections=inputs["pooled_projections"],
                timestep=sigmas[index].expand(1).to(device, latents.dtype),
                img_ids=inputs["img_ids"],
                txt_ids=inputs["txt_ids"],
                guidance=inputs["guidance"],
                return_dict=False,
            )[0]
            latents = latents + (sigmas[index + 1] - sigmas[index]).item() * velocity
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - started)
    return seconds


def measure(shape: Shape, variant: Variant, device: torch.device, steps: int, backend: str) -> list[str]:
    """One row: s/step median and mean, warm-up seconds, peak GPU GiB; or why it did not run."""
    reason = unavailable(variant, device)
    if reason is not None:
        return [variant.name, f"unavailable ({reason})", "", "", "", ""]
    dtype = torch.bfloat16
    # Each variant starts clean: no compiled graphs (they pin the last model's weights) and no cached memory.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = prepare(shape, variant, dtype, device, backend)
    inputs = step_inputs(shape, dtype, device)
    started = time.perf_counter()
    euler_run(model, inputs, WARMUP_STEPS, device)
    warmup = time.perf_counter() - started
    seconds = euler_run(model, inputs, steps, device)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "—"
    del model
    return [
        variant.name,
        f"{statistics.median(seconds):.4f}",
        "",
        f"{statistics.fmean(seconds):.4f}",
        f"{warmup:.1f}",
        peak,
    ]


def with_ratios(rows: list[list[str]]) -> list[list[str]]:
    """Fill the 'vs bf16' column from the first (bf16) row's median."""
    base = float(rows[0][1]) if rows[0][1][0].isdigit() else None
    for row in rows:
        if base is not None and row[1][:1].isdigit():
            row[2] = f"{float(row[1]) / base:.2f}x"
    return rows


def plot(rows: list[list[str]], device_name: str, plot_dir: Path) -> None:
    measured = [row for row in rows if row[1][:1].isdigit()]
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(measured) + 1.5))
    axis.barh([row[0] for row in measured], [float(row[1]) for row in measured])
    axis.invert_yaxis()
    axis.set_xlabel("seconds per step (median)")
    axis.set_title(f"FLUX Fill transformer per step: {device_name}")
    save_plot(figure, plot_dir, "gpu_transformer")


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__)
    arguments.add_argument("--variants", help="comma-separated variant names (default: all)")
    arguments.add_argument("--steps", type=int, help="timed steps per variant (default 8 on GPU, 3 on CPU)")
    args = arguments.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        shape, device_name = Shape(FULL_CONFIG, 4096, 512), torch.cuda.get_device_name(device)
    elif args.quick:
        shape, device_name = (
            Shape({**FULL_CONFIG, **QUICK, **SMALL_TEXT}, 64, 16),
            "CPU, quick scaled-down config",
        )
    else:
        shape, device_name = Shape({**FULL_CONFIG, **SMALL, **SMALL_TEXT}, 256, 32), "CPU, scaled-down config"
    steps = args.steps or (8 if cuda else 2 if args.quick else 3)
    # Inductor on CUDA is the point; on the CPU, eager proves the compile path without minutes of C++ builds.
    backend = "inductor" if cuda else "eager"
    wanted = VARIANTS if not args.variants else [v for v in VARIANTS if v.name in args.variants.split(",")]
    rows, failed = [], False
    for variant in wanted:
        try:
            rows.append(measure(shape, variant, device, steps, backend))
        except Exception as error:  # one variant's failure must not lose the others' figures
            traceback.print_exc()
            rows.append([variant.name, f"error: {type(error).__name__}: {error}"[:120], "", "", "", ""])
            failed = True
    headers = ["variant", "s/step (median)", "vs bf16", "s/step (mean)", "warm-up s", "peak GPU GiB"]
    layers = f"{shape.config['num_layers']}+{shape.config['num_single_layers']} blocks"
    width = shape.config["num_attention_heads"] * shape.config["attention_head_dim"]
    notes = [
        f"{device_name}: {layers}, width {width}, {shape.image_tokens}+{shape.text_tokens} tokens, bf16, "
        f"{steps} timed steps after {WARMUP_STEPS} warm-up steps; compile backend {backend}",
        "random weights: fbcache's hit rate is not the real model's "
        "(median = a cached step, mean = this run's mix)",
    ]
    report("GPU transformer: seconds per step by switch", markdown_table(headers, with_ratios(rows)), notes)
    plot(rows, device_name, args.plot_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
