"""Every number this project takes from MM1 and its peers, each with where it comes from.

This is the one home of published facts: defaults elsewhere (the trainer's config, the recipe,
the planner, the data pipeline, the size table) import them from here, and no other module
spells them. A value marked *secondary* comes from summaries of the paper rather than its own
text (``../shared/notes/mm1-and-peers.md``): a documented default a user can override.

MM1 = McKinzie et al. 2024, "MM1: Methods, Analysis & Insights from Multimodal LLM
Pre-training" (``../shared/MM1-paper-notes.txt``): Sec. "Model Scaling", Sec. "Final Model and
Training Recipe" and Appendix B "Pre-training".
"""
from __future__ import annotations

import math

# ------------------------------------------------------------------------ MM1: the LR law
# Sec. "Model Scaling": a grid search of the peak LR at 9M, 85M, 302M and 1.2B LLM parameters,
# then linear regression in log space (natural logs):  eta(N) = exp(-0.4214 ln N - 0.5535).
MM1_LAW_SLOPE = -0.4214
MM1_LAW_INTERCEPT = -0.5535
MM1_SWEEP_SIZES = ("9M", "85M", "302M", "1.2B")
MM1_SWEEP_PARAMS = (9e6, 85e6, 302e6, 1.2e9)
# Appendix B: the predicted peak LRs of the final sizes, one significant figure
# (the law gives 5.83e-5, 4.08e-5, 2.21e-5).
MM1_LR_TABLE = {"3B": 6e-5, "7B": 4e-5, "30B": 2e-5}


def mm1_peak_lr(params: float) -> float:
    """MM1's predicted optimum peak LR, exp(-0.4214 ln N - 0.5535), at N = ``params`` LLM parameters."""
    return math.exp(MM1_LAW_SLOPE * math.log(params) + MM1_LAW_INTERCEPT)


# ------------------------------------------------------------------------ MM1: the schedule
# Appendix B "Learning Rate Schedule": cosine decay with a linear warmup of 2000 steps, to 10%
# of the peak over 2e5 training steps.
SCHEDULE = "cosine"
WARMUP_STEPS = 2000
STEPS = 200_000
DECAY_STEPS = STEPS
MIN_LR_RATIO = 0.1

# ------------------------------------------------------------------------ peers: the WSD schedule
# Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"
# (arXiv 2405.18392): a constant LR after warmup, then a cooldown over the last ~20% of the steps
# matches cosine to 10%; their (1-sqrt) cooldown shape beats a linear one.
WSD_COOLDOWN_FRACTION = 0.2

# ------------------------------------------------------------------------ MM1: the optimizer
# Appendix B: AdamW "with an implementation that decouples the learning rate and weight decay"
# and gradient clipping at max norm 1.
GRAD_CLIP = 1.0
# Secondary: weight decay lambda = 0.1 x the peak LR, applied decoupled from the LR.
WEIGHT_DECAY_RATIO = 0.1
# Not in MM1's text: LLaMA's AdamW betas (Touvron et al. 2023), which AXLearn's LLM recipes use
# too, and torch's default epsilon.
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
# Appendix B: "For MM1-30B, we also add a z-loss term with scale 1e-4" (PaLM's z-loss).
Z_LOSS = 1e-4
Z_LOSS_SIZES = ("30B",)

# ------------------------------------------------------------------------ MM1: batch and data
# Appendix B "Batch Size and Composition" / "Final Model and Training Recipe": 512 sequences of
# 4096 tokens, up to 16 images per sequence, 144 tokens per image (C-Abstractor), 378 x 378
# images for the final models (ViT-H); the ablations use ViT-L/14 at 336 px.
BATCH_SIZE = 512
SEQ_LEN = 4096
MAX_IMAGES = 16
IMAGE_TOKENS = 144
IMAGE_SIZE = 378
ABLATION_IMAGE_SIZE = 336
# "Final Model and Training Recipe": 45% interleaved, 45% image-text pairs, 10% text-only.
MIXTURE = {"caption": 0.45, "interleaved": 0.45, "text": 0.10}

# ------------------------------------------------------------------------ peers
# Step Law (StepFun 2025, "Predictable Scale"): every run within 0.25% of its (N, D) cell's
# best loss enters the fit.
STEP_LAW_WITHIN = 0.0025
# Step Law's batch law, B* = 0.58 D^0.571 (B and D in tokens), and its LR law
# eta* = 1.79 N^-0.713 D^0.307 (dense models 2e8-1e9 parameters, D 4e9-1e11 tokens).
STEP_LAW_BATCH_COEF = 0.58
STEP_LAW_BATCH_EXPONENT = 0.571
STEP_LAW_LR_COEF = 1.79
STEP_LAW_LR_N_EXPONENT = -0.713
STEP_LAW_LR_D_EXPONENT = 0.307
# Cerebras-GPT's tuned muP input multiplier (nanoGPT-mup's mup_input_alpha), used by mup and
# completep at every size (see mm1model.parametrization for why it matters here).
MUP_INPUT_MULT = 10.0
# microsoft/mup's coordinate-check bar: activations within 1.2x over a 4x width range,
# i.e. |log-log slope| <= 0.13.
COORD_CHECK_THRESHOLD = 0.13
# torchtitan's FSDP2 Llama-3.1-8B runs on 8 H100s reach 33-39% MFU in bf16.
TORCHTITAN_MFU = 0.35

# ------------------------------------------------------------------------ hardware datasheets
# Dense BF16 Tensor Core peak FLOP/s, by the exact name torch.cuda.get_device_name reports
# (mm1model.accelerator.peak_flops looks names up exactly: a substring match credits an H100
# PCIe with the SXM part's 989 TFLOP/s). NVIDIA's datasheets print the figure with 2:4
# structured sparsity; the dense peak is half of it:
# - "NVIDIA H100 Tensor Core GPU" datasheet: BF16 1,979 TFLOPS (H100 SXM), 1,513 (H100 PCIe),
#   1,671 (H100 NVL), all "with sparsity" (the dense SXM value, 989.4, is the Hopper whitepaper's).
# - "NVIDIA H200 Tensor Core GPU" datasheet: BF16 1,979 TFLOPS (H200 SXM), 1,671 (H200 NVL),
#   with sparsity.
# - "NVIDIA A100 Tensor Core GPU" datasheet: BF16 312 TFLOPS dense (624 with sparsity), the
#   same for SXM and PCIe, 40 and 80 GB.
GPU_PEAK_FLOPS_BY_DEVICE_NAME = {
    "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # H200 SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
}
# The planner's short names (scaling plan --gpu) are the SXM parts, with their memory as sold
# (GB = 1e9 bytes; the same datasheets: H100 SXM 80 GB, H200 141 GB).
GPU_DEVICE_NAMES = {"H100": "NVIDIA H100 80GB HBM3", "H200": "NVIDIA H200"}
GPU_MEMORY_GB = {"H100": 80.0, "H200": 141.0}
GPU_PEAK_FLOPS = {short: GPU_PEAK_FLOPS_BY_DEVICE_NAME[name] for short, name in GPU_DEVICE_NAMES.items()}
