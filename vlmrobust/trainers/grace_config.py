from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import RobustTrainingArguments


@dataclass
class GRACEConfig(RobustTrainingArguments):
    """Configuration of GRACE (Gram-aligned Robustness via Adaptive Curvature Estimation, arXiv 2603.27139).

    LoRA on the vision tower of a frozen CLIP, trained on
    `L = CE(x_adv) + λ_LAR · CE_{θ+Δ}(x_adv) + λ_GV · L_GV`: the supervised zero-shot cross-entropy on PGD examples
    (TeCoA-style logits against frozen text embeddings), the same loss under the layer-adaptive-rank adversarial
    weight perturbation Δ (‖Δ‖ ≤ ρ, a SAM-style second pass), and the Gram volume of the clean, adversarial and
    weight-perturbed embeddings. Defaults are the reported ones (LoRA rank 64, max AWP rank 4, lr 2e-4, λ = 1,
    ρ = 0.05, K = 1000, β = 0.9, top / bottom 20 %, PGD-10 at ε = 4/255 with step 1/255: the base config's attack
    defaults); the paper's batch of 256 is the recipe config's. No public code exists: choices the paper does not state
    are marked [recon] and are fields.

    Args:
        lora_r (`int`, *optional*, defaults to 64): LoRA rank.
        lora_alpha (`float`, *optional*): LoRA α (scaling α / r); [recon] defaults to `2·lora_r`, as vlmrobust's
            LVLM LoRA.
        lora_dropout (`float`, *optional*, defaults to 0.0): [recon] LoRA dropout.
        lora_target_modules (`list[str]`, *optional*): [recon] the tower's modules to adapt; defaults to every linear
            layer of the transformer blocks for transformers CLIP (q/k/v/out_proj, fc1, fc2); for open_clip, whose
            `nn.MultiheadAttention` bypasses sub-module forwards, the MLP's c_fc, c_proj and the patch embedding conv1.
            LAR-AWP perturbs the linear ones.
        merge_lora_at_end (`bool`, *optional*, defaults to `True`): merge the adapters into the tower when training
            ends (PEFT's `merge_and_unload`), so the model in memory and the saved checkpoint are a plain CLIP.
        awp_rho (`float`, *optional*, defaults to 0.05): ρ, the Frobenius radius of the weight perturbation.
        awp_radius (`str`, *optional*, defaults to `"global"`): [recon] `"global"`: ‖Δ‖ over all adapted layers = ρ
            (SAM); `"layer"`: each perturbed layer's ‖Δ_l‖ = ρ.
        awp_max_rank (`int`, *optional*, defaults to 4): perturbation rank of the highest-curvature layers.
        awp_middle_rank (`int`, *optional*): [recon] rank of the layers between the top and bottom fractions;
            defaults to `max(1, awp_max_rank // 2)`.
        curvature_top_fraction (`float`, *optional*, defaults to 0.2): fraction of adapted layers at the max rank.
        curvature_bottom_fraction (`float`, *optional*, defaults to 0.2): fraction of adapted layers not perturbed.
        curvature_beta (`float`, *optional*, defaults to 0.9): EMA decay of the per-layer curvature `mean(g ⊙ g)`
            ([recon]: g the full gradient of the effective weight, updated every step).
        curvature_interval (`int`, *optional*, defaults to 1000): K, optimizer steps between rank re-allocations
            (the first at step 0).
        lambda_lar (`float`, *optional*, defaults to 1.0): λ_LAR, weight of the loss at θ + Δ.
        lambda_gv (`float`, *optional*, defaults to 1.0): λ_GV, weight of the Gram volume.
        gram_eps (`float`, *optional*, defaults to 1e-6): [recon] ε inside the volume's square root (see
            `vlmrobust.optim.gram_volume`).
        gram_perturbed_input (`str`, *optional*, defaults to `"clean"`): [recon] the input of the weight-perturbed
            embedding: `"clean"` (`φ_{θ+Δ}(x)`: each of the three embeddings one perturbation away from `φ_θ(x)`) or
            `"adv"` (`φ_{θ+Δ}(x_adv)`, one forward pass fewer).
        prompt_templates (`list[str]`, *optional*): templates of the frozen class embeddings (TeCoA's by default).
        logit_scale (`float`, *optional*, defaults to 100.0): [recon] temperature of the zero-shot logits in the
            loss and the training attack (TeCoA's).
    """

    method: str = field(default="grace", metadata={"help": "Method name."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2 * lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Tower modules to adapt (default: the linear layers of the transformer blocks)."})
    merge_lora_at_end: bool = field(default=True, metadata={"help": "Merge LoRA into the tower after training."})
    awp_rho: float = field(default=0.05, metadata={"help": "Radius rho of the weight perturbation (Frobenius)."})
    awp_radius: str = field(default="global", metadata={"help": "'global' (all layers) or 'layer' radius."})
    awp_max_rank: int = field(default=4, metadata={"help": "Perturbation rank of the top-curvature layers."})
    awp_middle_rank: int | None = field(default=None, metadata={"help": "Rank of the middle layers (max // 2)."})
    curvature_top_fraction: float = field(default=0.2, metadata={"help": "Fraction of layers at the max rank."})
    curvature_bottom_fraction: float = field(default=0.2, metadata={"help": "Fraction of layers not perturbed."})
    curvature_beta: float = field(default=0.9, metadata={"help": "EMA decay of the squared-gradient curvature."})
    curvature_interval: int = field(default=1000, metadata={"help": "K: steps between rank re-allocations."})
    lambda_lar: float = field(default=1.0, metadata={"help": "Weight of the loss at theta + Delta."})
    lambda_gv: float = field(default=1.0, metadata={"help": "Weight of the Gram volume loss."})
    gram_eps: float = field(default=1e-6, metadata={"help": "eps inside the Gram volume's square root."})
    gram_perturbed_input: str = field(default="clean", metadata={
        "help": "Input of the weight-perturbed embedding: 'clean' or 'adv'."})
    prompt_templates: list[str] = field(default_factory=lambda: ["This is a photo of a {}"],
                                        metadata={"help": "Prompt templates for the class embeddings."})
    logit_scale: float = field(default=100.0, metadata={"help": "Logit scale of the zero-shot head in the loss."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate."})

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}.")
        if self.awp_rho < 0 or self.lambda_lar < 0 or self.lambda_gv < 0 or self.gram_eps < 0:
            raise ValueError("awp_rho, lambda_lar, lambda_gv and gram_eps must be >= 0.")
        if self.awp_radius not in ("global", "layer"):
            raise ValueError(f"awp_radius must be 'global' or 'layer', got {self.awp_radius!r}.")
        if self.gram_perturbed_input not in ("clean", "adv"):
            raise ValueError(f"gram_perturbed_input must be 'clean' or 'adv', got {self.gram_perturbed_input!r}.")
        if self.curvature_interval < 1:
            raise ValueError(f"curvature_interval (K) must be >= 1, got {self.curvature_interval}.")
        super().__post_init__()
